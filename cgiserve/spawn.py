# -*- test-case-name: tests.test_spawn,tests.test_output_reader -*-
"""Starting a script: straight into its own directory and session, without forking the server."""

from __future__ import annotations

import ctypes
import fcntl
import functools
import os
import platform
import sys

from twisted.internet import abstract, main, process
from twisted.internet._baseprocess import BaseProcess

# glibc's <spawn.h> flags (stable ABI since glibc 2.26 added SETSID).
_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80

# Generous upper bounds for glibc's opaque structs (80, 336 and 128 bytes
# on x86_64 and aarch64): ctypes only needs the storage.
_OPAQUE_BYTES = 1024


def _load_libc():
    """
    glibc, for posix_spawn with the two extensions CGI needs, or None.

    addchdir_np (glibc 2.29) starts the script in its own directory and
    addclosefrom_np (glibc 2.34) closes every descriptor the server holds
    beyond stdio with one syscall; without them we fall back to fork.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.PyDLL(None, use_errno=True)
        libc.posix_spawn_file_actions_addchdir_np
        libc.posix_spawn_file_actions_addclosefrom_np
    except (OSError, AttributeError):
        return None
    return libc


# PyDLL: these calls are short, so they keep the GIL rather than pay for
# releasing and taking it back.
_libc = _load_libc()
# CDLL: posix_spawn releases the GIL while the kernel starts the child, so
# the thread pool (bcrypt checks) runs meanwhile.
_spawn = ctypes.CDLL(None, use_errno=True).posix_spawn if _libc is not None else None


def _spawn_attributes():
    """
    The attributes every script starts with, made once: its own session,
    every signal at its default (Python ignores SIGPIPE, and ignored
    signals survive exec) and none blocked.
    """
    attributes = ctypes.create_string_buffer(_OPAQUE_BYTES)
    signals = ctypes.create_string_buffer(_OPAQUE_BYTES)
    _check(_libc.posix_spawnattr_init(attributes), "attributes")
    _libc.sigfillset(signals)
    _check(_libc.posix_spawnattr_setsigdefault(attributes, signals), "sigdefault")
    _libc.sigemptyset(signals)
    _check(_libc.posix_spawnattr_setsigmask(attributes, signals), "sigmask")
    flags = _POSIX_SPAWN_SETSID | _POSIX_SPAWN_SETSIGDEF | _POSIX_SPAWN_SETSIGMASK
    _check(_libc.posix_spawnattr_setflags(attributes, ctypes.c_short(flags)), "flags")
    return attributes


def _check(result: int, what: str) -> None:
    if result != 0:
        raise OSError(result, f"{what}: {os.strerror(result)}")


def posix_spawn(
    executable: bytes, argv: list[bytes], envp: list[bytes], fdmap: dict[int, int], cwd: bytes
) -> int:
    """
    Start C{executable} in a new session, in C{cwd}, with the parent's
    descriptors C{fdmap[child] = parent} and no others; return its pid.

    Failure to change directory or to execute comes back as C{OSError}
    (glibc reports exec errors to the caller), so the caller can answer
    the client at once.
    """
    global _attributes
    if _attributes is None:
        _attributes = _spawn_attributes()
    actions = _file_actions(tuple(sorted(fdmap.items())), cwd)
    pid = ctypes.c_int()
    result = _spawn(ctypes.byref(pid), executable, actions.buffer, _attributes, _c_strings(argv), _c_strings(envp))
    if result:
        _check(result, os.fsdecode(executable))
    return pid.value


class _FileActions:
    """
    posix_spawn file actions: the child's descriptors C{fds} (child, parent),
    no others, and its directory C{cwd}; glibc's storage is freed with this.
    """

    def __init__(self, fds: tuple[tuple[int, int], ...], cwd: bytes) -> None:
        self.buffer = ctypes.create_string_buffer(_OPAQUE_BYTES)
        # Kept for __del__, which may run as the interpreter shuts down.
        self._destroy = _libc.posix_spawn_file_actions_destroy
        _check(_libc.posix_spawn_file_actions_init(self.buffer), "file actions")
        for child, parent in fds:
            _check(_libc.posix_spawn_file_actions_adddup2(self.buffer, parent, child), "dup2")
        _check(_libc.posix_spawn_file_actions_addclosefrom_np(self.buffer, len(fds)), "closefrom")
        _check(_libc.posix_spawn_file_actions_addchdir_np(self.buffer, cwd), "chdir")

    def __del__(self) -> None:
        # Safe on a buffer init never reached: glibc frees a NULL list.
        self._destroy(self.buffer)


# Made once per set of descriptor numbers and directory rather than per
# script: glibc checks each descriptor against RLIMIT_NOFILE with a system
# call, seven per script. The kernel hands out the lowest free numbers, so
# a busy server reuses a few hundred sets.
@functools.lru_cache(maxsize=256)
def _file_actions(fds: tuple[tuple[int, int], ...], cwd: bytes) -> _FileActions:
    """The L{_FileActions} for C{fds} and C{cwd}, made on first use."""
    return _FileActions(fds, cwd)


def _c_strings(strings: list[bytes]):
    """
    A NULL-terminated C{char *} array of C{strings}; filled by slice, which
    ctypes does at half the cost of converting them as arguments.
    """
    array = (ctypes.c_char_p * (len(strings) + 1))()
    array[: len(strings)] = strings
    return array


_attributes = None

# os.fsencode's codec, looked up once: the environment is encoded per request.
_FS_ENCODING = sys.getfilesystemencoding()


class OutputReader(process.ProcessReader):
    """
    A script's stdout or stderr, read up to 64 KiB at a time. After a short
    read it looks once more, so that a script that wrote its response and
    exited is done in the same turn of the reactor: the response's end then
    leaves with its body, in one write to the client.
    """

    reading = False
    # A cgiserve.splice.Splice moving what the pipe holds straight to a socket.
    splice = None

    def __init__(self, reactor, proc, name, fileno):
        # Twisted's, less its F_GETFL: the end of a new pipe has no status
        # flags for F_SETFL to keep.
        abstract.FileDescriptor.__init__(self, reactor)
        fcntl.fcntl(fileno, fcntl.F_SETFL, os.O_NONBLOCK)
        self.proc = proc
        self.name = name
        self.fd = fileno
        self.startReading()

    def startReading(self):
        self.reading = True
        super().startReading()

    def stopReading(self):
        self.reading = False
        super().stopReading()

    def doRead(self):
        if self.splice is not None:
            return self.splice.readable()
        for _ in range(2):
            try:
                data = os.read(self.fd, self.bufferSize)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return main.CONNECTION_LOST
            if not data:
                return main.CONNECTION_DONE
            self.dataReceived(data)
            if len(data) == self.bufferSize or not self.reading or self.disconnecting or self.splice is not None:
                # More is waiting (the next turn reads it), the response
                # is paused or given up, or the kernel moves the rest.
                return None
        return None


class ScriptProcess(process.Process):
    """
    The transport of a script started by L{posix_spawn}: Twisted's
    C{Process} wired to pipes that already exist.

    C{pipes} maps the child's descriptor to the parent's end of its pipe
    and whether the parent reads ("r") or writes ("w") it.
    """

    processReaderFactory = OutputReader

    def __init__(self, reactor, pid: int, protocol, pipes: dict[int, tuple[int, str]]) -> None:
        BaseProcess.__init__(self, protocol)
        self._reactor = reactor
        self.pid = pid
        self.pipes = {}
        for child, (parent, direction) in pipes.items():
            if direction == "r":
                self.pipes[child] = self.processReaderFactory(reactor, self, child, parent)
            else:
                self.pipes[child] = self.processWriterFactory(reactor, self, child, parent, forceReadHack=True)
        protocol.makeConnection(self)
        self.watch_exit()

    def watch_exit(self) -> None:
        """
        Have Twisted's SIGCHLD handling reap the script and call
        C{processEnded}. Unlike C{registerReapProcessHandler} this does not
        try a waitpid at once: a script that has exited already has raised
        SIGCHLD, which reaps it on the reactor's next turn.
        """
        process.reapProcessHandlers[self.pid] = self


class ForkedScriptProcess(process.Process):
    """
    Where glibc's posix_spawn extensions are missing: Twisted's fork and
    exec, plus C{setsid} so the script still leads its own process group.
    """

    processReaderFactory = OutputReader

    def _trySpawnInsteadOfFork(self, *args):
        return False

    def _setupChild(self, *args, **kwargs):
        os.setsid()
        super()._setupChild(*args, **kwargs)


def _devnull() -> int:
    """A descriptor on /dev/null for scripts without a body, opened once."""
    global _devnull_fd
    if _devnull_fd is None:
        _devnull_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _devnull_fd


_devnull_fd: int | None = None


def spawn_script(
    reactor, protocol, executable: str, argv: list[bytes], env: dict[str, str], cwd: str, stdin: bool = True
) -> process.Process:
    """
    Start a script in its own session and directory, connected to
    C{protocol}, and return its transport; raise C{OSError} when it cannot
    be executed. Without C{stdin} the script reads /dev/null.

    Like Twisted's own C{spawnProcess}, this calls posix_spawn on the
    reactor thread: it returns once the kernel has the child at its exec
    (about 130 microseconds), which costs the reactor less than handing
    the call to a thread and back (measured in bench/RESULTS.md).
    """
    if _libc is None:
        return spawn_script_forked(reactor, protocol, executable, argv, env, cwd, stdin)
    pipes = open_pipes(stdin)
    if min(pipes.child_ends.values()) < len(pipes.child_ends):
        # A pipe end on a stdio number (the server was started with stdio
        # closed) needs Twisted's general descriptor shuffling.
        pipes.close_parent_ends()
        pipes.close_child_ends()
        return spawn_script_forked(reactor, protocol, executable, argv, env, cwd, stdin)
    try:
        pid = posix_spawn(os.fsencode(executable), argv, encode_environ(env), pipes.child_ends, os.fsencode(cwd))
    except OSError:
        pipes.close_parent_ends()
        raise
    finally:
        pipes.close_child_ends()
    return ScriptProcess(reactor, pid, protocol, pipes.parent_ends)


def encode_environ(env: dict[str, str]) -> list[bytes]:
    """An environment as the C{NAME=value} entries a child gets, in order."""
    return [f"{name}={value}".encode(_FS_ENCODING, "surrogateescape") for name, value in env.items()]


class Pipes:
    """
    A script's stdin, stdout and stderr: C{child_ends[n]} becomes its
    descriptor n; C{parent_ends[n]} is the server's end and whether it
    reads ("r") or writes ("w") it. Without stdin the script reads
    /dev/null, which is shared and never closed here.
    """

    def __init__(self, stdin: bool) -> None:
        self.stdin = stdin
        self.parent_ends: dict[int, tuple[int, str]] = {}
        self.child_ends: dict[int, int] = {}

    def close_parent_ends(self) -> None:
        _close([fd for fd, _ in self.parent_ends.values()])

    def close_child_ends(self) -> None:
        _close([fd for child, fd in self.child_ends.items() if child or self.stdin])


def open_pipes(stdin: bool) -> Pipes:
    """The pipes for a script (L{Pipes}); OSError (too many open files) leaves none open."""
    pipes = Pipes(stdin)
    try:
        if stdin:
            pipes.child_ends[0], write_end = os.pipe()
            pipes.parent_ends[0] = (write_end, "w")
        else:
            pipes.child_ends[0] = _devnull()
        for child in (1, 2):
            read_end, pipes.child_ends[child] = os.pipe()
            pipes.parent_ends[child] = (read_end, "r")
    except OSError:
        pipes.close_parent_ends()
        pipes.close_child_ends()
        raise
    return pipes


def spawn_script_forked(reactor, protocol, executable, argv, env, cwd, stdin) -> process.Process:
    """L{spawn_script} by fork and exec, where posix_spawn cannot do it."""
    child_fds = {0: "w" if stdin else _devnull(), 1: "r", 2: "r"}
    return ForkedScriptProcess(reactor, executable, argv, env, cwd, protocol, None, None, child_fds)


def _close(fds) -> None:
    for fd in fds:
        os.close(fd)
