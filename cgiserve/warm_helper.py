# -*- test-case-name: tests.test_warm_helper,tests.test_warm_fidelity -*-
"""
The warm Python helper: a preloaded interpreter that forks one child per
request (ahead of it: a spare waits for the next request), each becoming
the script exactly as a fresh interpreter would.

It runs under the script's own interpreter, started as
C{INTERPRETER warm_helper.py --preload MODULES [--cpu=SOFT:HARD ...]}
(the scripts' resource limits, as prlimit takes them) with the
environment scripts get, so it may use the standard library only. Its
stdin is a SOCK_SEQPACKET socket to the server; each message is one
request or one reply (the wire format below, shared with the server's
side).
"""

import sys

# What every script finds imported when it starts, taken before the
# helper's own imports and its preloads: a script's directory may shadow
# any of those, never these.
STARTUP_MODULES = frozenset(sys.modules)

import array
import atexit
import builtins
import gc
import io
import os
import select
import signal
import socket
import time
import types
import weakref
from importlib.machinery import PathFinder, SourceFileLoader

# -- the wire format (pure; the server imports these)

RUN = b"run"
QUIT = b"quit"
READY = b"ready"
STARTED = b"started"
REFUSED = b"refused"
EXITED = b"exited"

# The three descriptors a run request carries (SCM_RIGHTS): the script's stdin, stdout, stderr.
RUN_FDS = 3

# No field holds a NUL: not a path, an argument or an environment entry.
_SEP = b"\0"

# A request holds its environment and at most a 64 KiB form as argv[1];
# the socket buffers are sized for this.
MAX_MESSAGE_BYTES = 1024 * 1024


def encode_run(token, cwd, script, argv0, args, env):
    """
    A run request: C{token} names it in the replies; the child runs
    C{script} in C{cwd} with C{sys.argv = [script, *args]},
    C{sys.orig_argv = [argv0, script, *args]} and exactly C{env} (a
    sequence of C{b"NAME=value"} entries, in order). All bytes;
    ValueError if one holds a NUL (it would shift every field after it).
    """
    fields = [RUN, token, cwd, script, argv0, b"%d" % len(args), *args, *env]
    if any(_SEP in field for field in fields):
        raise ValueError("a run request's field holds a NUL")
    return _SEP.join(fields)


def decode_run(message):
    """The fields of a run request (bytes or bytearray): (token, cwd, script, argv0, args, env); ValueError if malformed."""
    return _run_fields(message.split(_SEP))


def _run_fields(fields):
    """A run request's fields, split, as L{decode_run} returns them."""
    if len(fields) < 6 or fields[0] != RUN or not fields[5].isdigit():
        raise ValueError("malformed run request")
    count = int(fields[5])
    if len(fields) < 6 + count:
        raise ValueError("run request with fewer arguments than it says")
    return fields[1], fields[2], fields[3], fields[4], fields[6 : 6 + count], fields[6 + count :]


def encode_reply(kind, *fields):
    """A reply: C{kind} (READY, STARTED, REFUSED, EXITED) and its fields, as bytes."""
    return _SEP.join([kind, *fields])


def decode_reply(message):
    """A reply's kind and fields."""
    kind, *fields = message.split(_SEP)
    return kind, fields


# -- what a fresh interpreter would have


class Startup:
    """
    What this interpreter had when it started, before the helper changed
    anything: a fresh run of a script under the same environment has the
    same, and each child restores it.
    """

    def __init__(self):
        self.handlers = {signum: signal.getsignal(signum) for signum in signal.valid_signals()}
        # The preloads' top-level names (L{preloaded_names}), once imported.
        self.preloaded = frozenset()
        self.stdio = [_stream_config(stream) for stream in (sys.stdin, sys.stdout, sys.stderr)]
        # What the interpreter itself added to its environment at start
        # (PEP 538's LC_CTYPE): the kernel's copy of the environment is
        # what it was started with.
        with open("/proc/self/environ", "rb") as f:
            given = dict(entry.split(b"=", 1) for entry in f.read().split(b"\0") if b"=" in entry)
        self.added = [
            name + b"=" + value for name, value in os.environb.items() if given.get(name) != value
        ]
        # What Py_FinalizeEx restores before it collects the script's
        # garbage: builtins as pycore_init_builtins copied them, before
        # importlib (__loader__, __spec__), io (open) and site (exit...).
        self.builtins = {
            name: None if name in ("__loader__", "__spec__") else value
            for name, value in vars(builtins).items()
            if name not in ("open", "copyright", "credits", "exit", "help", "license", "quit")
        }
        # The scripts' resource limits (L{rlimits}), if any.
        self.limits = []


def rlimits(argv):
    """
    The resource limits given on the command line as prlimit's options
    (C{--cpu=SOFT:HARD}, C{--as=...}), as (resource, soft, hard) each.
    C{resource} is imported only when there are some, and only once the
    helper's own directory, whose resource.py would shadow it, is off
    sys.path.
    """
    given = [arg[2:].partition("=") for arg in argv if arg.startswith("--") and "=" in arg]
    if not given:
        return []
    import resource

    return [
        (getattr(resource, "RLIMIT_" + name.upper()), *(int(number) for number in value.split(":")))
        for name, _, value in given
    ]


def _stream_config(stream):
    """How a standard stream was made: the parts of CPython's create_stdio arguments that do not depend on its descriptor."""
    return {"encoding": stream.encoding, "errors": stream.errors, "write_through": stream.write_through}


def _make_stream(fd, name, mode, config):
    """A standard stream on C{fd}, made as CPython's create_stdio (pylifecycle.c) makes it."""
    buffered_stdio = not config["write_through"]
    buffer = io.open(fd, mode + "b", -1 if buffered_stdio or mode == "r" else 0, closefd=False)
    raw = buffer.raw if isinstance(buffer, io.BufferedIOBase) else buffer
    raw.name = name
    stream = io.TextIOWrapper(
        buffer,
        encoding=config["encoding"],
        errors=config["errors"],
        newline="\n",
        # Whether this descriptor is a terminal, not whether the helper's was.
        line_buffering=buffered_stdio and (raw.isatty() or fd == 2),
        write_through=not buffered_stdio,
    )
    stream.mode = mode
    return stream


# -- the child: becoming the script


def prepare(startup, own, keep):
    """
    In a forked spare, before it has its request: the signal state a
    fresh interpreter has, and no descriptor above 2 but C{keep}: the
    helper's objects in C{own} are closed through them (so that none
    closes a reused descriptor later), any other directly.
    """
    signal.set_wakeup_fd(-1)
    for signum, handler in startup.handlers.items():
        if handler is not None and signal.getsignal(signum) is not handler:
            signal.signal(signum, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for thing in own:
        thing.close()
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def become(startup, fds, cwd, script, argv0, args, env):
    """
    In a prepared spare given its request: rebuild the rest of what a
    fresh interpreter started on C{script} would have (C{fds} as its
    stdin, stdout and stderr, and no other descriptor; the scripts'
    resource limits), up to its fresh C{__main__} in C{sys.modules}.
    What L{run} and L{_exit} need: the script's absolute path, argv0,
    the newest module it finds imported, the builtins to restore at its
    end.
    """
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    if startup.limits:
        # Imported by rlimits() already. Before anything of the script's:
        # what it and all it starts may use.
        from resource import setrlimit

        for which, soft, hard in startup.limits:
            setrlimit(which, (soft, hard))
    os.chdir(os.fsdecode(cwd))
    os.environ.clear()
    for entry in (*env, *startup.added):
        name, _, value = entry.partition(b"=")
        os.environb[name] = value
    time.tzset()
    script_text = os.fsdecode(script)
    sys.argv = [script_text, *map(os.fsdecode, args)]
    sys.orig_argv = [os.fsdecode(argv0), *sys.argv]
    # As config.c's run_filename: joined to the working directory, not normalized.
    filename = script_text if script_text.startswith("/") else os.getcwd() + "/" + script_text
    if not getattr(sys.flags, "safe_path", False):
        directory = _script_directory(script_text)
        sys.path.insert(0, directory)
        if _shadows_a_preload(directory, startup.preloaded):
            for name in [name for name in sys.modules if name not in STARTUP_MODULES]:
                del sys.modules[name]
    streams = [
        _make_stream(fd, f"<{name}>", mode, config)
        for fd, name, mode, config in zip((0, 1, 2), ("stdin", "stdout", "stderr"), "rww", startup.stdio)
    ]
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams
    # The newest module before the script's own: looking at sys.modules
    # from its end up to this one, the exit touches no inherited page.
    modules = next(reversed(sys.modules))
    sys.modules["__main__"] = _main_module(filename)
    return filename, os.fsdecode(argv0), modules, startup.builtins


def _script_directory(script):
    """sys.path[0] for a script: the directory of its real path, as pathconfig.c's _PyPathConfig_ComputeSysPath0 finds it."""
    return os.path.dirname(os.path.realpath(script))


def preloaded_names():
    """The top-level names of the modules the helper imported beyond a fresh start, but built-in ones."""
    names = {name.partition(".")[0] for name in sys.modules if name not in STARTUP_MODULES}
    # Built-in modules are found before any directory is searched.
    return frozenset(names.difference(sys.builtin_module_names))


def _shadows_a_preload(directory, preloaded):
    """
    Whether the script's directory holds a module named as one the helper
    imported (C{preloaded}, from L{preloaded_names}): a fresh interpreter
    would import that one instead (a namespace package shadows nothing).
    One listing of the directory picks the few names worth a real search.
    """
    try:
        entries = os.listdir(directory)
    except OSError:
        return False
    for name in {entry.partition(".")[0] for entry in entries}.intersection(preloaded):
        spec = PathFinder.find_spec(name, [directory])
        if spec is not None and spec.loader is not None:
            return True
    return False


def _main_module(filename):
    """A fresh __main__, its names in the order a fresh one has them (pylifecycle.c add_main_module, then pythonrun.c's file runner)."""
    main = types.ModuleType("__main__")
    namespace = main.__dict__
    namespace["__annotations__"] = {}
    namespace["__builtins__"] = sys.modules["builtins"]
    namespace["__loader__"] = SourceFileLoader("__main__", filename)
    namespace["__file__"] = filename
    namespace["__cached__"] = None
    return main


def run(runner, filename, argv0):
    """
    Run the script with C{runner} (see L{file_runner}) as pythonrun.c's
    _PyRun_SimpleFileObject does, in the __main__ that L{become} made;
    its exit status.
    """
    namespace = sys.modules["__main__"].__dict__
    try:
        fd = os.open(filename, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        _write_stderr(f"{argv0}: can't open file {filename!r}: [Errno {e.errno}] {e.strerror}\n")
        return 2
    error = None
    try:
        open_script, call = runner
        call(*open_script(fd, filename, namespace))
    except BaseException as e:  # the script's own uncaught exception, printed as CPython prints it
        error = e
    # Handled out of the except clause: the hooks see no exception being handled.
    _flush_io()
    if isinstance(error, SystemExit):
        # PyErr_Print exits at once (Py_Exit), leaving __file__ in place.
        return _system_exit_code(error)
    code = 0 if error is None else _print_uncaught(error)
    namespace.pop("__file__", None)
    namespace.pop("__cached__", None)
    return code


def file_runner():
    """
    CPython's own parser and evaluator of a script file, as a pair:
    C{call(*open_script(fd, filename, namespace))} runs it with no frame of
    ours between (the call is C's). It is PyRun_FileExFlags, the function
    pythonrun.c runs a script's file with, through ctypes: its tokenizer
    decodes, and rejects, a file's bytes as a fresh run does. Where
    ctypes is missing, exec() of compile() of the file's bytes.
    """
    try:
        import ctypes
    except ImportError:  # a Python built without ctypes
        ctypes = None

    if ctypes is None:

        def compile_file(fd, filename, namespace):
            with open(fd, "rb") as f:
                return compile(f.read(), filename, "exec", dont_inherit=True), namespace

        return compile_file, exec

    fdopen = ctypes.CDLL(None, use_errno=True).fdopen
    fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
    fdopen.restype = ctypes.c_void_p
    run_file = ctypes.pythonapi.PyRun_FileExFlags
    run_file.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object, ctypes.c_int, ctypes.c_void_p
    ]
    run_file.restype = ctypes.py_object
    py_file_input = 257  # Include/compile.h

    def open_file(fd, filename, namespace):
        fp = fdopen(fd, b"rb")
        if not fp:
            os.close(fd)
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), filename)
        # closeit: the file is closed once parsed, before the script runs.
        return fp, os.fsencode(filename), py_file_input, namespace, namespace, 1, None

    return open_file, run_file


def _flush_io():
    """pythonrun.c's flush_io: flush stderr then stdout once the script's code ends, ignoring failures."""
    for name in ("stderr", "stdout"):
        try:
            getattr(sys, name).flush()
        except Exception:  # as CPython: cleared
            pass


# The status of a script ended by an uncaught KeyboardInterrupt: it dies of SIGINT.
INTERRUPTED = "SIGINT"


def _system_exit_code(exit):
    """The status SystemExit asks for (pythonrun.c _Py_HandleSystemExit)."""
    code = exit.code
    if code is None:
        return 0
    if isinstance(code, int):
        # Taken as a C long (a Py_ssize_t on Linux), -1 when it is none.
        return code if -sys.maxsize - 1 <= code <= sys.maxsize else -1
    stderr = getattr(sys, "stderr", None)
    if stderr is None:
        # PyObject_Print on C's stderr.
        os.write(2, str(code).encode("utf-8", "backslashreplace"))
    else:
        try:
            stderr.write(str(code))  # PyFile_WriteObject
        except Exception:  # as CPython: a failure to print it changes nothing
            pass
    _write_stderr("\n")
    return 1


def _write_stderr(text):
    """PySys_WriteStderr: to sys.stderr, or to C's stderr where that fails."""
    try:
        sys.stderr.write(text)
    except Exception:
        os.write(2, text.encode("utf-8", "backslashreplace"))


def _script_frames(traceback):
    """A traceback without the helper's own frames at its top."""
    while traceback is not None and traceback.tb_frame.f_code.co_filename == __file__:
        traceback = traceback.tb_next
    return traceback


def _print_uncaught(error):
    """
    Print an uncaught exception as PyErr_Print does (sys.last_*, then
    sys.excepthook), without the helper's own frames; the exit status.
    """
    traceback = _script_frames(error.__traceback__)
    error.__traceback__ = traceback
    if sys.version_info >= (3, 12):
        sys.last_exc = error
    sys.last_type, sys.last_value, sys.last_traceback = type(error), error, traceback
    try:
        hook = sys.excepthook
    except AttributeError:
        _write_stderr("sys.excepthook is missing\n")
        sys.__excepthook__(type(error), error, traceback)
    else:
        try:
            hook(type(error), error, traceback)
        except SystemExit as exit:  # the hook's own exit ends the script (handle_system_exit)
            return _system_exit_code(exit)
        except Exception as hook_error:  # a broken excepthook: reported as pythonrun.c reports it
            _write_stderr("Error in sys.excepthook:\n")
            hook_error.__traceback__ = _script_frames(hook_error.__traceback__)
            sys.__excepthook__(type(hook_error), hook_error, hook_error.__traceback__)
            _write_stderr("\nOriginal exception was:\n")
            sys.__excepthook__(type(error), error, traceback)
    return INTERRUPTED if isinstance(error, KeyboardInterrupt) else 1


def _file_is_closed(stream):
    """pylifecycle.c's file_is_closed: a stream without a (true) C{closed} counts as open."""
    try:
        return bool(stream.closed)
    except Exception:
        return False


def _flush_std_files():
    """Flush stdout and stderr as Py_FinalizeEx does (flush_std_files); False if one failed (exit status 120)."""
    ok = True
    stdout = getattr(sys, "stdout", None)
    if stdout is not None and not _file_is_closed(stdout):
        try:
            stdout.flush()
        except Exception as e:  # reported as the interpreter reports it
            _write_unraisable(e, stdout)
            ok = False
    stderr = getattr(sys, "stderr", None)
    if stderr is not None and not _file_is_closed(stderr):
        try:
            stderr.flush()
        except Exception:  # as CPython: cleared, unreported
            ok = False
    return ok


def _write_unraisable(error, stdout):
    """Report a failure to flush stdout through sys.unraisablehook, as each CPython reports it."""
    if sys.version_info >= (3, 14):
        message, obj = "Exception ignored while flushing sys.stdout", None
    elif sys.version_info >= (3, 13):
        message, obj = "Exception ignored on flushing sys.stdout", None
    else:
        message, obj = None, stdout
    args = _unraisable_hook_args()((type(error), error, _script_frames(error.__traceback__), message, obj))
    try:
        sys.unraisablehook(args)
    except Exception:  # a broken hook: the exit status says enough
        pass


class _RaisesInDel:
    def __del__(self):
        raise RuntimeError


def _unraisable_hook_args():
    """The type of sys.unraisablehook's argument (which the default hook insists on), caught from one unraisable exception."""
    caught = []
    hook, sys.unraisablehook = sys.unraisablehook, caught.append
    try:
        _RaisesInDel()
    finally:
        sys.unraisablehook = hook
    return type(caught[0])


# The sys attributes finalize_modules (pylifecycle.c) sets to None
# before it wipes modules (with _PyImport_FiniExternal's, from 3.12).
_SYS_DELETES = [
    "path", "argv", "ps1", "ps2", *(["last_exc"] if sys.version_info >= (3, 12) else []),
    "last_type", "last_value", "last_traceback", "path_hooks", "path_importer_cache", "meta_path",
    "__interactivehook__",
]


def _created_since(newest):
    """The modules imported after C{newest} (the script's), in import order; all of them if the script dropped it."""
    created = []
    for name in reversed(sys.modules):
        if name == newest:
            break
        if name != "__main__" and name not in STARTUP_MODULES:
            created.append(name)
    created.reverse()
    return created


def _exit(code, modules_before, builtins_copy):
    """
    End as a fresh interpreter ends (Py_FinalizeEx's steps), but tear down
    only what the script made: the inherited preloads stay untouched, as
    writing to them would copy every page the child shares.
    """
    if "threading" in sys.modules:
        sys.modules["threading"]._shutdown()
    atexit._run_exitfuncs()
    status = 0 if code == INTERRUPTED else code
    if not _flush_std_files():
        status = 120
    # _PySignal_Fini: no Python handler runs from here on.
    for signum in signal.valid_signals():
        if callable(signal.getsignal(signum)):
            signal.signal(signum, signal.SIG_DFL)
    gc.collect()
    _finalize_modules(["__main__", *_created_since(modules_before)], builtins_copy)
    # Py_FinalizeEx flushes again once sys is wiped, so in effect as the
    # streams' deallocation does: silently.
    _flush_io()
    if code == INTERRUPTED:
        # As main.c's exit_sigint: the parent sees the signal.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        status = 128 + signal.SIGINT
    os._exit(status & 0xFF)


def _finalize_modules(names, builtins_copy):
    """
    pylifecycle.c's finalize_modules for the modules C{names} (in import
    order): clear sys's special names, drop the modules, restore the
    builtins, collect garbage, then wipe what is still alive, latest first.
    """
    builtins._ = None
    for name in _SYS_DELETES:
        setattr(sys, name, None)
    for name in ("stdin", "stdout", "stderr"):
        setattr(sys, name, getattr(sys, f"__{name}__", None))
    alive = []
    for name in names:
        if isinstance(sys.modules.get(name), types.ModuleType):
            alive.append(weakref.ref(sys.modules[name]))
            sys.modules[name] = None
    for name in names:
        sys.modules.pop(name, None)
    restored = vars(builtins)
    restored.clear()
    restored.update(builtins_copy)
    gc.collect()
    for module in reversed(alive):
        if module() is not None:
            _clear_module_dict(module().__dict__)
    gc.collect()


def _clear_module_dict(namespace):
    """moduleobject.c's _PyModule_ClearDict: None for names with one leading underscore, then for all but __builtins__."""
    for name, value in list(namespace.items()):
        if value is not None and isinstance(name, str) and name[:1] == "_" and name[1:2] != "_":
            namespace[name] = None
    for name, value in list(namespace.items()):
        if value is not None and isinstance(name, str) and name != "__builtins__":
            namespace[name] = None


# -- the helper's loop


def preload(names):
    """Import each module, skipping (and naming) those that fail."""
    failed = []
    for name in names:
        try:
            __import__(name)
        except Exception:  # a module this interpreter lacks or cannot import: not preloaded
            failed.append(name)
    return failed


class _Loop:
    """
    The helper's loop. A spare child is forked ahead of each request and
    prepares itself (its own session, a fresh signal state, none of the
    helper's descriptors) while it waits, so that a request costs no fork
    on its way. The request's start is reported once its child leads its
    own session (so that the server may signal its group), its exit once
    it is reaped.

    Requests arrive in one buffer, and each copy made of one is wiped once
    it is handed over: every later spare inherits this memory, freed
    blocks too. A spare is forked only with no request's descriptors open.
    """

    def __init__(self, channel, startup):
        self.channel = channel
        self.startup = startup
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.buffer = bytearray(MAX_MESSAGE_BYTES)
        # Children given a request, and a child's "ready" pipe -> its token
        # and pid until it has its session.
        self.children = set()
        self.starting = {}
        # The spare: its pid, its socket, its "ready" pipe (None once ready).
        self.spare = None

    def serve(self):
        """
        Serve until QUIT or until the server goes, then until the last
        child has ended: None. In a spare: its end of the socket its
        request comes on (see L{take_request}).
        """
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        accepting = True
        while accepting or self.children:
            if accepting and self.spare is None:
                spare_socket = self._fork_spare()
                if spare_socket is not None:
                    return spare_socket
            spare_ready = [self.spare[2]] if self.spare and self.spare[2] is not None else []
            watched = [self.wake_r, *self.starting, *spare_ready, *([self.channel] if accepting else [])]
            readable, _, _ = select.select(watched, [], [])
            for ready in set(readable) & set(self.starting):
                self._announce(ready)
            if spare_ready and spare_ready[0] in readable:
                os.close(spare_ready[0])
                self.spare = (*self.spare[:2], None)
            if self.channel in readable:
                accepting = self._receive()
                if not accepting and self.spare is not None:
                    self._drop_spare()
            if self.wake_r in readable:
                os.read(self.wake_r, 4096)
            self._reap()
        return None

    def _fork_spare(self):
        """Fork the next spare: None here; in the spare, prepared, its socket."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Room for the largest request, as the server makes on its side.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * MAX_MESSAGE_BYTES)
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            prepared = False
            try:
                os.setsid()
                os.close(ready_w)
                own = [self.channel, ours, *(_Fd(fd) for fd in (self.wake_r, self.wake_w, ready_r, *self.starting))]
                prepare(self.startup, own, theirs.fileno())
                prepared = True
            finally:
                if not prepared:  # never back into the helper's loop
                    os._exit(127)
            return theirs
        os.close(ready_w)
        theirs.close()
        self.spare = (pid, ours, ready_r)
        return None

    def _forget_spare(self):
        _, spare_socket, ready = self.spare
        self.spare = None
        spare_socket.close()
        if ready is not None:
            os.close(ready)

    def _drop_spare(self):
        """End the spare (its socket closed, it exits) and reap it."""
        pid = self.spare[0]
        self._forget_spare()
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # already reaped
            pass

    def _receive(self):
        """Take one message; False once no more requests will come."""
        try:
            size, ancillary, flags, _ = self.channel.recvmsg_into([self.buffer], socket.CMSG_SPACE(RUN_FDS * 4))
        except InterruptedError:
            return True
        fds = _received_fds(ancillary)
        message = self.buffer[:size]
        _wipe(memoryview(self.buffer)[:size])
        try:
            if not message or message == QUIT:
                return False
            self._start(message, flags & socket.MSG_TRUNC, fds)
            return True
        finally:
            for fd in fds:
                os.close(fd)
            _wipe(message)

    def _start(self, message, truncated, fds):
        """Hand a request to the spare, or refuse it."""
        fields = message.split(_SEP)
        try:
            if truncated:
                raise ValueError(f"run request longer than {MAX_MESSAGE_BYTES} bytes")
            token = bytes(_run_fields(fields)[0])
            if len(fds) != RUN_FDS:
                raise ValueError(f"{len(fds)} descriptors instead of {RUN_FDS}")
            pid, spare_socket, ready = self.spare
            try:
                spare_socket.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            except OSError as e:  # a spare gone, or a request its socket cannot take
                self._forget_spare()
                raise ValueError(f"not handed to a child: {e.strerror}")
        except ValueError as e:
            self.channel.sendmsg([encode_reply(REFUSED, bytes(fields[1]) if len(fields) > 1 else b"", str(e).encode())])
            return
        finally:
            _wipe(*fields)
        self.spare = None
        spare_socket.close()
        self.children.add(pid)
        if ready is None:
            self.channel.sendmsg([encode_reply(STARTED, token, b"%d" % pid)])
        else:
            self.starting[ready] = (token, pid)

    def _announce(self, ready):
        """The child behind C{ready} leads its session (or has ended): report its start."""
        token, pid = self.starting.pop(ready)
        os.close(ready)
        self.channel.sendmsg([encode_reply(STARTED, token, b"%d" % pid)])

    def _reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and pid == self.spare[0]:
                # Dead before its request: the next is forked in its place.
                self._forget_spare()
                continue
            if pid not in self.children:
                continue
            for ready, (_, starting) in list(self.starting.items()):
                if starting == pid:
                    # Its start before its end, however fast it was.
                    self._announce(ready)
            self.children.discard(pid)
            self.channel.sendmsg([encode_reply(EXITED, b"%d" % pid, b"%d" % status)])


def _wipe(*buffers):
    """Overwrite each (bytearray or memoryview) with zeros, in place."""
    for buffer in buffers:
        buffer[:] = bytes(len(buffer))


def take_request(spare_socket, startup):
    """
    In a prepared spare: wait for its request on C{spare_socket}, then
    become its script; what L{become} returns. It ends quietly if no
    request comes, with status 127 if it cannot become the script.
    """
    child = None
    try:
        while True:
            try:
                message, ancillary, _, _ = spare_socket.recvmsg(MAX_MESSAGE_BYTES, socket.CMSG_SPACE(RUN_FDS * 4))
                break
            except InterruptedError:
                continue
        fds = _received_fds(ancillary)
        spare_socket.close()
        if not message:
            os._exit(0)
        _, cwd, script, argv0, args, env = decode_run(message)
        child = become(startup, fds, cwd, script, argv0, args, env)
    finally:
        if child is None:
            os._exit(127)
    return child


def _received_fds(ancillary):
    fds = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, len(data) - len(data) % 4, 4))
    return fds


class _Fd:
    """A raw descriptor the child closes with the helper's other own objects."""

    def __init__(self, fd):
        self.fd = fd

    def close(self):
        os.close(self.fd)


def main(argv):
    """Serve the server on stdin: None when it is done; in a spare, the runner, the startup and its socket."""
    if sys.implementation.name != "cpython" or sys.version_info < (3, 10):
        sys.exit(f"warm Python needs CPython 3.10 or later, not {sys.implementation.name} {sys.version.split()[0]}")
    if not getattr(sys.flags, "safe_path", False):
        # The helper's own directory (cgiserve/) must neither stay on the
        # scripts' path nor shadow the standard library for the preloads
        # (cgiserve/resource.py would).
        helper_dir = sys.path.pop(0)
        sys.path_importer_cache.pop(helper_dir, None)
    startup = Startup()
    startup.limits = rlimits(argv)
    if os.getsid(0) != os.getpid():
        # Out of the server's session: a terminal's Ctrl-C is the server's to handle.
        os.setsid()
    names = argv[argv.index("--preload") + 1].split(",") if "--preload" in argv else []
    failed = preload([name for name in names if name])
    runner = file_runner()
    startup.preloaded = preloaded_names()
    with socket.socket(fileno=os.dup(0)) as channel:
        gc.collect()
        # Children then never touch the preloaded objects' GC headers.
        gc.freeze()
        channel.sendmsg([encode_reply(READY, b"%d" % os.getpid(), ",".join(failed).encode(), os.path.dirname(os.__file__).encode())])
        spare_socket = _Loop(channel, startup).serve()
    return None if spare_socket is None else (runner, startup, spare_socket)


if __name__ == "__main__":
    # A spare comes back up here to take its request and run the script,
    # with none of the helper's frames under it but this one and run()'s.
    _spare = main(sys.argv[1:])
    if _spare is not None:
        _runner, _startup, _socket = _spare
        _filename, _argv0, _modules, _builtins = take_request(_socket, _startup)
        _exit(run(_runner, _filename, _argv0), _modules, _builtins)
