# -*- test-case-name: tests.test_warm_fidelity -*-
"""
A probe of an interpreter's start and exit, run by the server both by a
fresh interpreter and through the warm helper: the two outputs must be
the same byte for byte.

It prints, one a line as C{name: value}, what a helper that misbehaves
on some interpreter would most likely get wrong, then ends by an
uncaught exception (a traceback on stderr, exit status 1) after an
atexit callback and a finalizer have printed. Standard library only;
the same output for the same interpreter, environment, working
directory and descriptors; no process ids. Never import it: run it.

Its directory, cgiserve/, is its sys.path[0]: it imports no module that
a file there shadows (cgiserve/resource.py: the limits come from /proc).
"""

NAMES_AT_START = list(globals())

import atexit
import gc
import locale
import os
import signal
import stat
import sys
import time
import warnings


def show(name, value):
    print(f"{name}: {value}")


def stream(name):
    f = getattr(sys, name)
    buffer = getattr(f, "buffer", None)
    raw = getattr(buffer, "raw", buffer)
    return (
        f"{f!r} {f.encoding} {f.errors} line_buffering={f.line_buffering} write_through={f.write_through}"
        f" {type(buffer).__name__} {raw!r} isatty={f.isatty()} same_as_original={f is getattr(sys, f'__{name}__')}"
    )


def descriptor(fd):
    info = os.fstat(fd)
    kind = next((kind for kind in ("FIFO", "SOCK", "CHR", "REG", "DIR") if getattr(stat, f"S_IS{kind}")(info.st_mode)), "?")
    return f"{kind} inheritable={os.get_inheritable(fd)} blocking={os.get_blocking(fd)}"


def main():
    show("argv", sys.argv)
    show("orig_argv", sys.orig_argv)
    show("executable", sys.executable)
    show("base_executable", getattr(sys, "_base_executable", None))
    show("prefixes", [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.platlibdir])
    show("version", sys.version)
    show("path", sys.path)
    show("flags", sys.flags)
    show("warnoptions", sys.warnoptions)
    show("xoptions", sys._xoptions)
    show("warnings.filters", [(action, getattr(message, "pattern", message), category.__name__, getattr(module, "pattern", module), line) for action, message, category, module, line in warnings.filters])
    show("dont_write_bytecode", sys.dont_write_bytecode)
    show("recursionlimit", sys.getrecursionlimit())
    show("meta_path", [getattr(finder, "__name__", type(finder).__name__) for finder in sys.meta_path])
    show("path_hooks", [getattr(hook, "__name__", type(hook).__name__) for hook in sys.path_hooks])
    show("encodings", [sys.getfilesystemencoding(), sys.getfilesystemencodeerrors(), locale.getpreferredencoding(False)])
    show("locale", locale.setlocale(locale.LC_ALL))
    for name in ("stdin", "stdout", "stderr"):
        show(name, stream(name))
    show("environ", sorted(os.environb.items()))
    show("environ order", list(os.environ))
    show("cwd", os.getcwd())
    show("fds", sorted(os.listdir("/proc/self/fd"), key=int))
    for fd in range(3):
        show(f"fd {fd}", descriptor(fd))
    show("umask", oct(os.umask(os.umask(0o022))))
    show("ids", [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())])
    show("session leader", os.getsid(0) == os.getpid() == os.getpgrp())
    show("nice", os.getpriority(os.PRIO_PROCESS, 0))
    show("affinity", sorted(os.sched_getaffinity(0)))
    with open("/proc/self/limits") as f:
        show("limits", [" ".join(line.split()) for line in f])
    show("signals", {int(signum): signal.getsignal(signum) for signum in sorted(signal.valid_signals())})
    show("sigmask", sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
    show("sigpending", sorted(signal.sigpending()))
    show("itimer", signal.getitimer(signal.ITIMER_REAL))
    with open("/proc/self/status") as f:
        show("kernel signals", [line.strip() for line in f if line.startswith(("SigBlk", "SigIgn", "SigCgt"))])
    show("timezone", [time.tzname, time.timezone, time.daylight])
    show("gc", [gc.isenabled(), gc.get_threshold(), gc.get_debug()])
    main_module = sys.modules["__main__"]
    show("__main__ names at start", NAMES_AT_START)
    show("__main__ is this module", vars(main_module) is globals())
    show("__name__", __name__)
    show("__doc__", __doc__ is not None)
    show("__package__", __package__)
    show("__spec__", __spec__)
    show("__file__", __file__)
    show("__cached__", __cached__)
    show("__loader__", [type(__loader__).__name__, __loader__.name, __loader__.path])
    show("__builtins__", __builtins__)
    show("__annotations__", __annotations__)
    sys.stdout.flush()
    atexit.register(lambda: print("atexit:", hasattr(main_module, "__file__"), NAMES_AT_START[0]))
    global finalized_at_exit
    finalized_at_exit = Finalized()
    try:
        {}["missing"]
    except KeyError as e:
        raise RuntimeError("the probe ends here") from e


class Finalized:
    def __del__(self):
        sys.stdout.write(f"finalized: {sys.stdout is sys.__stdout__} {sys.path}\n")


if __name__ == "__main__":
    main()
