"""
Differential tests of the warm Python helper: each script runs by a fresh
interpreter and through the helper, on every CPython >= 3.10 this machine
has, and exit status, stdout and stderr must be the same byte for byte.
Where a difference is inherent to forking from a warm interpreter, a test
shows it and names it.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.warm_client import HELPER, Helper, Run, fresh

# -- the interpreters


@dataclass(frozen=True)
class Interpreter:
    """A real CPython executable (as it names itself in sys.executable) and its version."""

    path: str
    version: tuple[int, int]

    def __str__(self) -> str:
        return "%d.%d:%s" % (*self.version, self.path)

    @property
    def slug(self) -> str:
        """A directory name of its own."""
        return "%d.%d%s" % (*self.version, self.path.replace("/", "-"))


# A CGI server's PATH: no pyenv shims, no virtualenv.
SERVER_PATH = "/usr/local/bin:/usr/bin:/bin"


def _candidates():
    """Paths that may name a CPython: Debian's, the one running the tests (its base, not a venv), python3.10 to 3.14 wherever found."""
    yield "/usr/bin/python3"
    yield getattr(sys, "_base_executable", None) or sys.executable
    yield sys.executable
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    for minor in range(10, 15):
        name = f"python3.{minor}"
        for directory in os.environ.get("PATH", "").split(os.pathsep):
            yield os.path.join(directory, name)
        for directory in ("/usr/bin", "/usr/local/bin", "/opt/python/bin", f"/opt/python3.{minor}/bin"):
            yield os.path.join(directory, name)
        for root in roots:
            if root:
                yield from sorted(glob.glob(os.path.join(root, "versions", f"3.{minor}.*", "bin", name)))


def find_interpreters() -> list[Interpreter]:
    """Every CPython >= 3.10 here, each once: asked for its own sys.executable and version, deduplicated by (real path, version)."""
    found: dict[tuple[str, tuple[int, int]], Interpreter] = {}
    for candidate in _candidates():
        # pyenv's shims are shell scripts choosing a Python by the environment.
        if not candidate or "/shims/" in candidate or not os.access(candidate, os.X_OK) or os.path.isdir(candidate):
            continue
        try:
            answer = subprocess.run(
                [candidate, "-c", "import sys, platform; print(platform.python_implementation(), *sys.version_info[:2], sys.executable)"],
                env={"PATH": SERVER_PATH},
                capture_output=True,
                timeout=20,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        implementation, major, minor, executable = answer.stdout.decode().strip().split(" ", 3)
        version = (int(major), int(minor))
        if implementation != "CPython" or version < (3, 10) or not os.path.isabs(executable):
            continue
        found.setdefault((os.path.realpath(executable), version), Interpreter(executable, version))
    return sorted(found.values(), key=lambda interpreter: (interpreter.version, interpreter.path))


INTERPRETERS = find_interpreters()

# -- the environments

# What the server starts the helper with, and (with the request's own
# variables) what each script gets: the variables an interpreter reads at
# start (PYTHON*, LC_*, LANG, HOME) are the same in both. No LANG or
# LC_*: PEP 538 coerces the C locale, adding LC_CTYPE.
HELPER_ENV = {"PATH": SERVER_PATH}

REQUEST_ENV = {
    "SERVER_SOFTWARE": "cgiserve",
    "GATEWAY_INTERFACE": "CGI/1.1",
    "REQUEST_METHOD": "GET",
    "QUERY_STRING": "a=1&b=%C3%A9",
    "SCRIPT_NAME": "/cgi-bin/script.py",
    "PATH": SERVER_PATH,
    "REMOTE_ADDR": "127.0.0.1",
    "SERVER_PROTOCOL": "HTTP/1.1",
}

# Exercised by the scripts: each is imported by the helper before it forks.
PRELOAD = [
    "json", "re", "email.message", "urllib.parse", "html", "subprocess", "threading",
    "atexit", "pickle", "random", "tempfile", "logging",
]


# -- the cases


@dataclass(frozen=True)
class Case:
    """
    A script (C{source}, with C{files} and symbolic C{links} beside it)
    and how it is run: its arguments, extra environment, stdin, working
    directory (relative to the script's), with stderr merged into stdout
    or both on a pty.
    """

    source: str | bytes
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    files: dict[str, str | bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    merge_stderr: bool = False
    tty: bool = False
    name: str = "script.py"
    since: tuple[int, int] = (3, 10)


def _text(source: str | bytes) -> bytes:
    return textwrap.dedent(source).lstrip("\n").encode() if isinstance(source, str) else source


def _write(directory: Path, case: Case) -> Path:
    """The case's files under C{directory} (fresh for each interpreter); the script's path."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for name, content in {**case.files, case.name: case.source}.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name in case.links:
            path.symlink_to(case.links[name])
        else:
            path.write_bytes(_text(content))
    (directory / case.cwd).mkdir(parents=True, exist_ok=True)
    return directory / case.name


CASES = {
    # argv
    "argv with spaces, non-ASCII, non-UTF-8 and empty arguments": Case(
        """
        import sys
        print(sys.argv)
        print(sys.orig_argv)
        print([arg.encode(sys.getfilesystemencoding(), "surrogateescape") for arg in sys.argv[1:]])
        """,
        args=("a b", "é", "", "--flag", "-c", "\udcff\udcfe", "x=1&y=2"),
    ),
    "argv without arguments": Case("import sys; print(sys.argv, sys.orig_argv, len(sys.argv))\n"),
    "a script path with a space and a non-UTF-8 byte": Case(
        "import sys; print(repr(__file__), sys.argv[0] == __file__, repr(sys.path[0]))\n", name="caf\udce9 d\u00e9j\u00e0.py"
    ),
    # the environment
    "os.environ: exactly the request's, in its order, with PEP 538's addition": Case(
        """
        import os
        for name, value in os.environb.items():
            print(name, value)
        print(list(os.environ) == [os.fsdecode(name) for name in os.environb])
        """,
        env={"ZZ_FIRST": "1", "NON_UTF8": "caf\udce9", "EMPTY": "", "SPACES": " a  b ", "EQUALS": "a=b=c"},
    ),
    "the C environment a program started by the script sees": Case(
        """
        import subprocess
        subprocess.run(["/usr/bin/env"], check=True)
        """,
        env={"ZZ_FIRST": "1", "NON_UTF8": "caf\udce9"},
    ),
    "locale and encodings the environment gives": Case(
        """
        import locale, sys
        print(locale.setlocale(locale.LC_CTYPE), locale.setlocale(locale.LC_ALL))
        print(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors(), locale.getpreferredencoding(False))
        print(sys.flags.utf8_mode, repr(__import__("os").environ.get("LC_CTYPE")))
        """
    ),
    "sys.flags, sys.path, sys.executable and the prefixes": Case(
        """
        import sys
        print(sys.flags)
        print(sys.path)
        print(sys.executable, sys._base_executable, sys.prefix, sys.base_prefix, sys.exec_prefix)
        print(sys.warnoptions, sys._xoptions, sys.dont_write_bytecode, sys.getrecursionlimit())
        """
    ),
    # bytes that are not UTF-8, and source encodings
    "non-UTF-8 bytes and surrogates on stdout and stderr": Case(
        r"""
        import sys
        sys.stdout.buffer.write(b"raw \xff\xfe\n")
        sys.stderr.write("escaped \udcff \u20ac\n")
        print("caf\udce9")
        """
    ),
    "a source file in Latin-1 with its coding cookie": Case(b"# -*- coding: latin-1 -*-\ns = 'caf\xe9'\nprint(ascii(s), len(s))\n"),
    "a source file with non-UTF-8 bytes and no cookie": Case(b"# caf\xe9\nprint('ran')\n"),
    "a source file with a NUL byte": Case(b"print('before')\0\n"),
    "a source file with a UTF-8 BOM": Case(b"\xef\xbb\xbfprint('bom', __doc__)\n"),
    "a source file with CRLF line ends and no final newline": Case(b"import sys\r\nprint(1)\r\nprint(2)"),
    # the working directory
    "the working directory and relative paths": Case(
        """
        import os
        print(os.getcwd())
        print(open("data.txt").read())
        print(sorted(os.listdir(".")))
        """,
        files={"elsewhere/data.txt": "found in the working directory"},
        cwd="elsewhere",
    ),
    # stdin
    "stdin read as text, line by line": Case(
        """
        import sys
        for line in sys.stdin:
            print(repr(line))
        """,
        stdin=b"one\ntwo\r\nthree \xc3\xa9\nno newline",
    ),
    "stdin read as bytes": Case(
        """
        import hashlib, sys
        data = sys.stdin.buffer.read()
        print(len(data), hashlib.sha256(data).hexdigest())
        """,
        stdin=bytes(range(256)) * 1024,
    ),
    "stdin partly as text, the rest as bytes": Case(
        """
        import sys
        print(repr(sys.stdin.readline()))
        print(repr(sys.stdin.buffer.read()))
        """,
        stdin=b"first line\nsecond\nthird",
    ),
    "input() with a prompt, then at end of file": Case(
        """
        name = input("name? ")
        print("hello", name)
        input("again? ")
        """,
        stdin=b"world\n",
    ),
    # the standard streams
    "how stdin, stdout and stderr are made": Case(
        """
        import sys
        for stream in (sys.stdin, sys.stdout, sys.stderr):
            print(stream, stream.encoding, stream.errors, stream.line_buffering, stream.write_through, stream.newlines)
            print(" ", stream.buffer, type(stream.buffer).__name__, getattr(stream.buffer, "raw", None), stream.fileno(), stream.isatty())
        print(sys.stdin is sys.__stdin__, sys.stdout is sys.__stdout__, sys.stderr is sys.__stderr__)
        """
    ),
    "interleaved stdout and stderr on one pipe: stdout is buffered, stderr by line": Case(
        """
        import sys
        print("out 1")
        sys.stderr.write("err 1\\n")
        sys.stderr.write("err 2 without newline ")
        print("out 2", flush=True)
        sys.stderr.write("err 3\\n")
        print("out 3")
        """,
        merge_stderr=True,
    ),
    "stdout written before an uncaught exception comes before its traceback": Case(
        """
        import sys
        print("out before")
        sys.stderr.write("err before\\n")
        raise ValueError("after output")
        """,
        merge_stderr=True,
    ),
    "stdout and stderr on a terminal": Case(
        """
        import sys
        print("out", sys.stdout.isatty(), sys.stdout.line_buffering)
        sys.stderr.write("err\\n")
        print("out 2")
        raise SystemExit("bye")
        """,
        tty=True,
    ),
    "a large output": Case(
        """
        import sys
        for i in range(20000):
            print(i, "x" * 80)
        sys.stderr.write("e" * 100000 + "\\n")
        """
    ),
    "print() to a replaced sys.stdout, and to None": Case(
        """
        import io, sys
        real = sys.stdout
        sys.stdout = io.StringIO()
        print("captured")
        captured, sys.stdout = sys.stdout.getvalue(), None
        print("lost")
        sys.stdout = real
        print(repr(captured))
        """
    ),
    "a replaced sys.stdout without flush(): exit status 120": Case(
        """
        import sys
        class Writer:
            def write(self, text):
                sys.__stdout__.write(text.upper())
            def __repr__(self):
                return "<Writer>"
        sys.stdout = Writer()
        print("shouted")
        """
    ),
    "sys.stdout closed by the script": Case("import sys; print('x'); sys.stdout.close()\n"),
    "descriptor 1 closed under a buffered sys.stdout": Case("import os; print('lost'); os.close(1)\n"),
    # sys.exit and SystemExit
    **{
        f"sys.exit({form})": Case(f"import sys\nprint('out')\nsys.exit({form})\n")
        for form in ("", "0", "3", "256", "-1", "None", "True", "'a message'", "'caf\\xe9 \\udcff'", "['a', 'list']", "1.5")
    },
    "raise SystemExit (the class)": Case("raise SystemExit\n"),
    "exit() from site": Case("exit(4)\n"),
    "sys.exit in a function, through finally": Case(
        """
        import sys
        def f():
            try:
                sys.exit(5)
            finally:
                print("finally ran")
        f()
        """
    ),
    "sys.exit with a message and sys.stderr None": Case("import sys\nsys.stderr = None\nsys.exit('to C stderr')\n"),
    "sys.exit in a thread ends only the thread": Case(
        """
        import sys, threading
        thread = threading.Thread(target=sys.exit, args=(3,))
        thread.start()
        thread.join()
        print("still here")
        """
    ),
    "os._exit: unflushed output is lost": Case("import os\nprint('lost')\nos._exit(9)\n"),
    "os._exit after a flush": Case("import os, sys\nprint('kept')\nsys.stdout.flush()\nos._exit(0)\n"),
    # uncaught exceptions
    "an uncaught exception in a function": Case(
        """
        def inner(value):
            return {}[value]
        def outer():
            inner("missing")
        outer()
        """
    ),
    "an exception raised from another": Case(
        """
        try:
            int("x")
        except ValueError as e:
            raise RuntimeError("converting failed") from e
        """
    ),
    "an exception during the handling of another": Case(
        """
        try:
            1 / 0
        except ZeroDivisionError:
            undefined_name
        """
    ),
    "an exception raised from None": Case(
        """
        try:
            1 / 0
        except ZeroDivisionError:
            raise KeyError("clean") from None
        """
    ),
    "an exception with notes": Case("e = ValueError('noted')\ne.add_note('a note')\nraise e\n", since=(3, 11)),
    "an exception group": Case(
        "raise ExceptionGroup('several', [ValueError(1), TypeError(2), ExceptionGroup('inner', [KeyError(3)])])\n",
        since=(3, 11),
    ),
    "an exception whose message is not ASCII": Case("raise ValueError('caf\\xe9 \\u20ac \\udcff')\n"),
    "an exception whose str() fails": Case(
        """
        class Odd(Exception):
            def __str__(self):
                raise RuntimeError("no str")
        raise Odd()
        """
    ),
    "RecursionError's depth is the only difference (see the inherent one)": Case(
        """
        import sys
        def f(n):
            return f(n + 1)
        try:
            f(0)
        except RecursionError as e:
            print(type(e).__name__, e)
        """
    ),
    "KeyboardInterrupt ends the script by SIGINT": Case("print('out')\nraise KeyboardInterrupt\n"),
    "SIGINT sent to itself": Case(
        """
        import os, signal, time
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        """
    ),
    "KeyboardInterrupt with SIGINT blocked: exit status 130": Case(
        "import signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\nraise KeyboardInterrupt\n"
    ),
    # SyntaxError and warnings
    "a SyntaxError in the script": Case("print('never')\ndef broken(:\n    pass\n"),
    "an IndentationError in the script": Case("if True:\nprint('no indent')\n"),
    "a TabError in the script": Case("if True:\n        x = 1\n\ty = 2\n"),
    "a SyntaxError in a sibling module": Case("import broken\n", files={"broken.py": "x = = 1\n"}),
    "warnings at compile time": Case("x = '\\d'\nprint(x is 'a', x)\n"),
    "warnings at run time, shown and hidden": Case(
        """
        import warnings, helper_mod
        warnings.warn("a user warning")
        warnings.warn("deprecated here", DeprecationWarning)
        helper_mod.warn_deprecated()
        warnings.warn("once", UserWarning)
        """,
        files={"helper_mod.py": "import warnings\ndef warn_deprecated():\n    warnings.warn('hidden', DeprecationWarning)\n"},
    ),
    # excepthooks
    "a custom sys.excepthook": Case(
        """
        import sys
        def hook(kind, value, traceback):
            print("hooked", kind.__name__, value, traceback.tb_frame.f_code.co_filename == __file__, traceback.tb_next)
            print("last", sys.last_type.__name__, sys.last_value is value, sys.last_traceback is traceback)
            print("last_exc", getattr(sys, "last_exc", value) is value)
        sys.excepthook = hook
        raise KeyError("hook me")
        """
    ),
    "a sys.excepthook that fails": Case(
        """
        import sys
        def hook(*args):
            raise RuntimeError("the hook broke")
        sys.excepthook = hook
        raise KeyError("original")
        """
    ),
    "a sys.excepthook that exits": Case(
        """
        import sys
        def hook(*args):
            print("exiting from the hook")
            sys.exit(7)
        sys.excepthook = hook
        raise KeyboardInterrupt
        """
    ),
    "sys.excepthook set to None": Case("import sys\nsys.excepthook = None\nraise KeyError(1)\n"),
    "sys.excepthook deleted": Case("import sys\ndel sys.excepthook\nraise KeyError(1)\n"),
    "an uncaught exception with sys.stderr None": Case("import sys\nsys.stderr = None\nraise KeyError(1)\n"),
    "threading.excepthook for a thread's exception": Case(
        """
        import threading
        def work():
            raise ValueError("in a thread")
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        print("main goes on")
        """
    ),
    # atexit
    "atexit: last registered runs first, with its arguments": Case(
        """
        import atexit
        def say(*words, **named):
            print(*words, named)
        atexit.register(say, "first registered")
        atexit.register(say, "second", "registered", key="value")
        atexit.register(say, "unregistered")
        atexit.unregister(say)
        atexit.register(say, "registered again")
        print("script ends")
        """
    ),
    "atexit: a callback registered while exiting (CPython then drops the rest)": Case(
        """
        import atexit
        atexit.register(print, "registered first")
        @atexit.register
        def last():
            print("last registered, first run")
            atexit.register(print, "registered while exiting")
        """
    ),
    "atexit: a callback that fails, one that exits": Case(
        """
        import atexit, sys
        class Callback:
            def __init__(self, action):
                self.action = action
            def __call__(self):
                self.action()
            def __repr__(self):
                return "<Callback>"
        atexit.register(print, "runs after both")
        atexit.register(Callback(lambda: sys.exit(6)))
        atexit.register(Callback(lambda: 1 / 0))
        """
    ),
    "atexit runs after an uncaught exception is printed": Case(
        "import atexit\natexit.register(print, 'at exit')\nraise ValueError('first')\n", merge_stderr=True
    ),
    "atexit sees __main__ without __file__, but with its globals": Case(
        """
        import atexit, __main__
        value = "a global"
        atexit.register(lambda: print(hasattr(__main__, "__file__"), hasattr(__main__, "__cached__"), value))
        """
    ),
    "atexit after sys.exit keeps __main__.__file__": Case(
        "import atexit, sys, __main__\natexit.register(lambda: print(hasattr(__main__, '__file__')))\nsys.exit(0)\n"
    ),
    "weakref.finalize at exit": Case(
        """
        import weakref
        class Thing:
            pass
        thing = Thing()
        weakref.finalize(thing, print, "finalized at exit")
        import atexit
        atexit.register(print, "atexit registered after")
        """
    ),
    # __main__
    "__name__ == '__main__' and __main__'s attributes": Case(
        '''
        """The script's docstring."""
        import sys
        if __name__ == "__main__":
            print("run as main")
        print(__name__, __package__, __spec__, __doc__, __cached__)
        print(__file__, type(__loader__).__name__, __loader__.name, __loader__.path)
        print(type(__builtins__).__name__, __builtins__.__name__)
        print(list(globals()))
        import __main__
        print(__main__ is sys.modules["__main__"], vars(__main__) is globals(), __main__.__spec__)
        print(__loader__.get_source("__main__") == open(__file__).read())
        x: int = 1
        print(__annotations__)
        '''
    ),
    "pickling a class defined in the script": Case(
        """
        import pickle
        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y
            def __repr__(self):
                return f"Point({self.x}, {self.y})"
        data = pickle.dumps(Point(1, 2), protocol=4)
        print(data)
        print(pickle.loads(data))
        """
    ),
    "multiprocessing with spawn re-imports the script": Case(
        """
        import multiprocessing
        def work(queue):
            queue.put(("from the child", __name__))
        if __name__ == "__main__":
            context = multiprocessing.get_context("spawn")
            queue = context.Queue()
            process = context.Process(target=work, args=(queue,))
            process.start()
            print(queue.get(timeout=20))
            process.join(20)
            print("child exit code", process.exitcode)
        else:
            print("imported as", __name__)
        """
    ),
    # imports
    "a sibling module": Case(
        """
        import sibling
        print(sibling.__name__, sibling.__file__, sibling.VALUE, sibling.__spec__.origin)
        """,
        files={"sibling.py": "VALUE = 42\nprint('importing sibling', __name__)\n"},
    ),
    "a sibling package with relative imports": Case(
        """
        from pkg import sub
        import pkg
        print(sub.combined(), pkg.__path__, pkg.__package__, sub.__package__)
        """,
        files={
            "pkg/__init__.py": "from .base import BASE\n",
            "pkg/base.py": "BASE = 'base'\n",
            "pkg/sub.py": "from . import base\nfrom .base import BASE\ndef combined():\n    return BASE + '+sub'\n",
        },
    ),
    "a relative import in the script": Case("from . import sibling\n", files={"sibling.py": ""}),
    "a missing module": Case("import no_such_module_anywhere\n"),
    "a sibling module shadowing a preloaded one, for the stdlib's imports too": Case(
        """
        import random
        print(random.SHADOW, random.__file__ == __file__.replace("script.py", "random.py"))
        try:
            import tempfile
        except ImportError as e:
            print(e)
        """,
        files={"random.py": "SHADOW = 'the sibling'\n"},
    ),
    "a sibling package shadowing a preloaded one": Case(
        "import html\nprint(html.SHADOW, html.__file__.endswith('html/__init__.py'))\n",
        files={"html/__init__.py": "SHADOW = 'the sibling package'\n"},
    ),
    "a sibling module shadowing one the helper itself imports": Case(
        "import selectors\nprint(selectors.SHADOW)\n", files={"selectors.py": "SHADOW = 'my selectors'\n"}
    ),
    "a sibling directory without __init__ shadows nothing": Case(
        "import json\nprint(json.dumps({'namespace': 'ignored'}))\n", files={"json/notes.txt": "not a package\n"}
    ),
    "a script reached through a chain of symbolic links and a linked directory": Case(
        "",
        name="links/entry.py",
        files={"chain/middle.py": "", "linked": "", "real/target.py": "import sys\nprint(sys.path[0], __file__, sys.argv[0])\n"},
        links={"links/entry.py": "../chain/middle.py", "chain/middle.py": "../linked/target.py", "linked": "real"},
    ),
    # subprocesses
    "a subprocess's environment, arguments and stdin": Case(
        """
        import os, subprocess, sys
        os.environ["ADDED"] = "by the script"
        del os.environ["QUERY_STRING"]
        subprocess.run([sys.executable, "-c", "import os, sys; print(sorted(os.environ.items())); print(sys.argv, sys.stdin.read())"], check=True)
        sys.stdout.flush()
        os.system("echo from the shell: $REQUEST_METHOD $ADDED")
        subprocess.run(["cat"], check=True)
        """,
        stdin=b"the rest of stdin\n",
    ),
    "a forked child's exit status": Case(
        """
        import os
        pid = os.fork()
        if pid == 0:
            print("in the child")
            os._exit(3)
        _, status = os.waitpid(pid, 0)
        print("child exited", os.waitstatus_to_exitcode(status))
        """
    ),
    "SIGPIPE in a subprocess is the default one": Case(
        "import subprocess\nprint(subprocess.run('yes | head -n 2', shell=True, capture_output=True))\n"
    ),
    # signals
    "signal dispositions, the kernel's view and the mask": Case(
        """
        import signal
        for signum in sorted(signal.valid_signals()):
            print(int(signum), signal.getsignal(signum))
        print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
        print(signal.getitimer(signal.ITIMER_REAL), signal.sigpending(), signal.set_wakeup_fd(-1))
        with open("/proc/self/status") as f:
            print([line for line in f if line.startswith(("SigBlk", "SigIgn", "SigCgt"))])
        """
    ),
    "a handler for a signal sent to itself": Case(
        """
        import os, signal
        def handler(signum, frame):
            print("caught", signal.Signals(signum).name, frame.f_code.co_name)
        signal.signal(signal.SIGUSR1, handler)
        os.kill(os.getpid(), signal.SIGUSR1)
        print("after")
        """
    ),
    "killed by SIGTERM": Case("import os, signal, time\nprint('unflushed')\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(5)\n"),
    "an interval timer's handler raises": Case(
        """
        import signal, time
        def alarm(signum, frame):
            raise TimeoutError("timer fired")
        signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        time.sleep(5)
        """
    ),
    "writing to a pipe nobody reads: BrokenPipeError, not SIGPIPE": Case(
        """
        import os
        r, w = os.pipe()
        os.close(r)
        try:
            os.write(w, b"x")
        except BrokenPipeError as e:
            print("BrokenPipeError", e.errno)
        """
    ),
    # descriptors
    "only descriptors 0, 1 and 2 are open, as pipes, blocking and inheritable": Case(
        """
        import fcntl, os, stat
        print(sorted(os.listdir("/proc/self/fd"), key=int))
        for fd in range(3):
            mode = os.fstat(fd).st_mode
            print(fd, stat.S_ISFIFO(mode), fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_ACCMODE | os.O_NONBLOCK | os.O_APPEND), os.get_inheritable(fd), os.get_blocking(fd))
        opened = []
        for fd in range(3, 1024):
            try:
                os.fstat(fd)
            except OSError:
                continue
            opened.append(fd)
        print(opened)
        """
    ),
    # what is flushed and finalized at exit
    "an unclosed file is flushed at exit": Case(
        """
        import os
        out = open(os.dup(1), "w")
        out.write("unclosed text\\n")
        binary = open(os.dup(1), "wb")
        binary.write(b"unclosed bytes\\n")
        print("printed")
        """
    ),
    "an unclosed file in a reference cycle: its text is lost, as CPython loses it": Case(
        """
        import os
        class Holder:
            pass
        holder = Holder()
        holder.me = holder
        holder.out = open(os.dup(1), "w")
        holder.out.write("from the cycle\\n")
        del holder
        print("printed")
        """
    ),
    "an unclosed file in a sibling module is flushed at exit": Case(
        "import sibling\nprint('printed')\n",
        files={"sibling.py": "import os\nout = open(os.dup(1), 'w')\nout.write('from the sibling\\n')\n"},
    ),
    "__del__ at exit uses the script's globals": Case(
        """
        import sys
        class Noisy:
            def __init__(self, name):
                self.name = name
            def __del__(self):
                sys.stdout.write(f"del {self.name}\\n")
        first = Noisy("first")
        second = Noisy("second")
        _private = Noisy("private")
        print("script ends")
        """
    ),
    "__del__ at exit of objects in a reference cycle and of a sibling module's": Case(
        """
        import sibling
        class Node:
            def __init__(self, name):
                self.name, self.other = name, None
            def __del__(self):
                print("del", self.name, type(self.other).__name__)
        a, b = Node("a"), Node("b")
        a.other, b.other = b, a
        del a, b
        keep = sibling.Kept()
        """,
        files={"sibling.py": "class Kept:\n    def __del__(self):\n        print('del kept', __name__)\n"},
    ),
    "__del__ at exit after sys.stdout was replaced prints to the original": Case(
        """
        import io, sys
        class Noisy:
            def __del__(self):
                print("del sees", sys.stdout is sys.__stdout__, sys.path, sys.argv)
        noisy = Noisy()
        sys.stdout = io.StringIO()
        """
    ),
    "__del__ at exit after an uncaught exception": Case(
        """
        import sys
        class Noisy:
            def __del__(self):
                sys.stderr.write("del after the traceback\\n")
        noisy = Noisy()
        raise ValueError("uncaught")
        """
    ),
    # threads
    "non-daemon threads are joined before atexit; daemon threads are not waited for": Case(
        """
        import atexit, threading, time
        atexit.register(print, "atexit")
        def slow():
            time.sleep(0.1)
            print("non-daemon thread done")
        threading.Thread(target=slow).start()
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        print("main done", threading.active_count())
        """
    ),
    "the main thread": Case(
        """
        import threading
        current = threading.current_thread()
        print(current.name, current is threading.main_thread(), threading.active_count(), [t.name for t in threading.enumerate()])
        print(threading.Thread(target=print).name, threading.Thread(target=print).name)
        """
    ),
    "a thread pool": Case(
        """
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(2) as pool:
            print(list(pool.map(lambda n: n * n, range(5))))
        pool = ThreadPoolExecutor(1)
        pool.submit(print, "left running at exit")
        """
    ),
    # EPIPE
    "EPIPE when stdout is flushed at exit": Case(
        """
        import os
        r, w = os.pipe()
        os.dup2(w, 1)
        os.close(r)
        print("nobody reads this")
        """
    ),
    "EPIPE when stderr is flushed at exit": Case(
        """
        import os, sys
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(r)
        sys.stderr.write("no newline, so still buffered")
        print("out")
        """
    ),
    "EPIPE while printing": Case(
        """
        import os, sys
        r, w = os.pipe()
        os.dup2(w, 1)
        os.close(r)
        try:
            print("x" * 100000)
        except BrokenPipeError as e:
            sys.stderr.write(f"caught {e}\\n")
        """
    ),
    # time zone and umask
    "TZ from the request": Case(
        """
        import datetime, time
        print(time.tzname, time.timezone, time.daylight, time.strftime("%Z %z", time.localtime(0)))
        print(datetime.datetime.fromtimestamp(0).isoformat(), datetime.datetime.now().astimezone().tzname())
        """,
        env={"TZ": "Asia/Tokyo"},
    ),
    "no TZ: the system's zone": Case("import time\nprint(time.tzname, time.timezone)\n"),
    "umask": Case(
        """
        import os, stat
        old = os.umask(0o027)
        print(oct(old))
        with open("made.txt", "w"):
            pass
        print(oct(stat.S_IMODE(os.stat("made.txt").st_mode)))
        os.unlink("made.txt")
        """
    ),
    # odds and ends
    "os.execv replaces the script, losing its unflushed output": Case(
        "import os\nprint('lost')\nos.execv('/bin/echo', ['echo', 'from echo', *os.environ['QUERY_STRING'].split('&')])\n"
    ),
    "a segmentation fault": Case("import ctypes\nprint('lost')\nctypes.string_at(0)\n"),
    "what reads the request's environment when called: tempfile, getpass, the terminal size": Case(
        """
        import getpass, shutil, tempfile
        print(tempfile.gettempdir(), getpass.getuser(), shutil.get_terminal_size())
        """,
        env={"TMPDIR": "/var/tmp", "LOGNAME": "www-data", "COLUMNS": "132", "LINES": "40"},
    ),
    "logging: the last resort handler and basicConfig": Case(
        """
        import logging
        logging.getLogger("early").warning("to the last resort handler")
        logging.basicConfig(format="%(levelname)s %(name)s %(filename)s:%(lineno)d %(message)s")
        logging.getLogger("configured").error("configured")
        try:
            1 / 0
        except ZeroDivisionError:
            logging.exception("with a traceback")
        """
    ),
    "inspect finds the script's source": Case(
        """
        import inspect
        def documented():
            "A docstring."
        print(inspect.getsource(documented), inspect.getmodule(documented).__name__, inspect.getfile(documented) == __file__)
        """
    ),
    "__del__ at exit sees the builtins as they were before the script changed them": Case(
        """
        import builtins, sys
        class Noisy:
            def __del__(self):
                print("del sees", print is builtins.print, "exit" in vars(builtins), hasattr(builtins, "added"))
        noisy = Noisy()
        builtins.print = lambda *args: sys.stdout.write("patched print\\n")
        builtins.added = True
        print("during the script")
        """
    ),
    "the garbage collector's settings": Case("import gc\nprint(gc.isenabled(), gc.get_threshold(), gc.get_debug())\n"),
    "random numbers differ from run to run, but are random": Case(
        "import random\nprint(len({random.random() for _ in range(100)}))\n"
    ),
}

@pytest.fixture(scope="module", params=INTERPRETERS, ids=str)
def interpreter(request) -> Interpreter:
    return request.param


@pytest.fixture(scope="module")
def workdir():
    top = Path(tempfile.mkdtemp(prefix="cgiserve-warm-"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def helper(interpreter):
    """The interpreter's warm helper, started once for all its cases."""
    with Helper(interpreter.path, HELPER_ENV, preload=PRELOAD) as helper:
        assert helper.failed_preloads == []
        yield helper


def both(interpreter: Interpreter, helper: Helper, script: Path, case: Case = Case("")) -> tuple[Run, Run]:
    """How C{script} ends run fresh, then through the helper, as C{case} says."""
    options = dict(
        args=case.args,
        env={**REQUEST_ENV, **case.env},
        cwd=str(script.parent / case.cwd),
        stdin=case.stdin,
        argv0=interpreter.path,
        merge_stderr=case.merge_stderr,
        tty=case.tty,
    )
    return fresh(interpreter.path, script, **options), helper.run(script, **options)


@pytest.mark.parametrize("name", list(CASES))
def test_same_as_fresh(interpreter, helper, workdir, name):
    """The script's exit status, stdout and stderr are the same byte for byte, run fresh or through the helper."""
    case = CASES[name]
    if interpreter.version < case.since:
        pytest.skip(f"needs Python {case.since}")
    directory = workdir / interpreter.slug / str(list(CASES).index(name))
    script = _write(directory, case)
    expected, got = both(interpreter, helper, script, case)
    assert got == expected


def _script(directory: Path, source: str, name: str = "script.py") -> Path:
    """A one-file case's script under C{directory}."""
    return _write(directory, Case(source, name=name))


# -- interpreters started in other environments

# Each is what the server would start both the helper and the fresh
# interpreters with; the request's environment carries the same.
VARIANTS = {
    "LANG=C.UTF-8": {"LANG": "C.UTF-8"},
    "LC_ALL=C": {"LC_ALL": "C"},
    "PYTHONIOENCODING=latin-1:replace PYTHONUNBUFFERED=1": {"PYTHONIOENCODING": "latin-1:replace", "PYTHONUNBUFFERED": "1"},
    "PYTHONSAFEPATH=1 PYTHONDONTWRITEBYTECODE=1 PYTHONHASHSEED=0": {
        "PYTHONSAFEPATH": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"
    },
    "PYTHONDEVMODE=1 PYTHONWARNINGS=always HOME=/nonexistent": {
        "PYTHONDEVMODE": "1", "PYTHONWARNINGS": "always", "HOME": "/nonexistent"
    },
}

VARIANT_CASES = [
    "os.environ: exactly the request's, in its order, with PEP 538's addition",
    "locale and encodings the environment gives",
    "non-UTF-8 bytes and surrogates on stdout and stderr",
    "how stdin, stdout and stderr are made",
    "interleaved stdout and stderr on one pipe: stdout is buffered, stderr by line",
    "stdout and stderr on a terminal",
    "a sibling module",
    "a sibling module shadowing a preloaded one, for the stdlib's imports too",
    "an unclosed file is flushed at exit",
    "__del__ at exit uses the script's globals",
    "EPIPE when stdout is flushed at exit",
]


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, interpreter):
    """The variant's environment and a helper of the interpreter started in it."""
    env = VARIANTS[request.param]
    with Helper(interpreter.path, {**HELPER_ENV, **env}, preload=PRELOAD) as helper:
        yield env, helper


@pytest.mark.parametrize("name", VARIANT_CASES)
def test_same_as_fresh_in_another_environment(interpreter, variant, workdir, name):
    """Started with other locale, stdio and PYTHON* variables, a script still runs the same through the helper."""
    env, helper = variant
    if "PYTHONDEVMODE" in env and name == "an unclosed file is flushed at exit":
        pytest.skip("inherent: see test_inherent_warnings_of_the_teardown_name_the_helper")
    case = dataclasses.replace(CASES[name], env={**CASES[name].env, **env})
    directory = workdir / "variants" / str(helper.process.pid) / str(VARIANT_CASES.index(name))
    expected, got = both(interpreter, helper, _write(directory, case), case)
    assert got == expected


def test_same_as_fresh_with_the_helper_on_a_terminal(interpreter, workdir):
    """A helper whose own stdout and stderr are a terminal still gives a script on pipes block-buffered stdout."""
    ours, theirs = os.openpty()
    try:
        with Helper(interpreter.path, HELPER_ENV, preload=PRELOAD, stdout=theirs, stderr=theirs) as helper:
            case = CASES["how stdin, stdout and stderr are made"]
            expected, got = both(interpreter, helper, _write(workdir / "on-a-terminal" / interpreter.slug, case), case)
    finally:
        os.close(theirs)
        os.close(ours)
    assert got == expected


# -- the probe


# Beside the helper; run, never imported.
PROBE = HELPER.with_name("warm_probe.py")


@pytest.mark.parametrize("env", [{}, *VARIANTS.values()], ids=["server", *VARIANTS])
def test_probe_same_as_fresh(interpreter, env):
    """cgiserve/warm_probe.py prints the same, byte for byte, run fresh or through the helper, and ends by its uncaught exception."""
    with Helper(interpreter.path, {**HELPER_ENV, **env}, preload=PRELOAD) as helper:
        # As the server runs it: in its own directory, with arguments.
        options = dict(args=("an argument", "caf\u00e9", ""), env={**REQUEST_ENV, **env}, cwd=str(PROBE.parent), argv0=interpreter.path)
        expected, got = fresh(interpreter.path, PROBE, **options), helper.run(PROBE, **options)
    assert got == expected
    assert expected.returncode == 1
    assert expected.stderr.endswith(b"RuntimeError: the probe ends here\n")
    lines = expected.stdout.decode(errors="replace").splitlines()
    assert [line.partition(":")[0] for line in lines[:2]] == ["argv", "orig_argv"]
    assert lines[-2:] == ["atexit: False __name__", "finalized: True None"]


def test_probe_imports_nothing_its_directory_shadows():
    """Run from cgiserve/, the probe's imports are none a module beside it would shadow."""
    imported = {line.split()[1].rstrip(",") for line in PROBE.read_text().splitlines() if line.startswith("import ")}
    beside = {path.stem for path in PROBE.parent.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()}
    assert imported and not imported & beside


# -- more cases that need more than one script


def test_a_relative_script_path(interpreter, helper, workdir):
    """A script named relative to its working directory: __file__ is made absolute, argv[0] is not."""
    script = _script(workdir / "relative" / interpreter.slug, "import sys; print(__file__, sys.argv, sys.path[0])")
    options = dict(env=REQUEST_ENV, cwd=str(script.parent.parent), argv0=interpreter.path)
    relative = f"{script.parent.name}/./{script.name}"
    assert helper.run(relative, **options) == fresh(interpreter.path, relative, **options)


def test_a_missing_script(interpreter, helper, workdir):
    """A script that is not there: exit status 2 and the interpreter's one line."""
    missing = workdir / "missing" / "nothing.py"
    options = dict(env=REQUEST_ENV, cwd=str(workdir), argv0=interpreter.path)
    expected = fresh(interpreter.path, missing, **options)
    assert expected.returncode == 2
    assert helper.run(missing, **options) == expected


def test_an_exit_status_beyond_a_c_long(interpreter, helper, workdir):
    """
    sys.exit(2**70) exits 255 both ways. Not reproduced: the OverflowError
    that CPython 3.12 and 3.13 printed then before gh-125842 (3.13 as
    "Exception ignored on threading shutdown"), a bug, not the script's.
    """
    expected, got = both(interpreter, helper, _script(workdir / "overflow" / interpreter.slug, "import sys; sys.exit(2 ** 70)"))
    assert (got.returncode, got.stdout) == (expected.returncode, expected.stdout) == (255, b"")
    assert got.stderr in (expected.stderr, b"")


# -- what one request leaves is invisible to the next


def test_no_state_leaks_between_requests(interpreter, helper, workdir):
    """What a request changes (preloaded modules, os.environ, sys.path, builtins, handlers, umask...) the next request does not see."""
    directory = workdir / "leaks" / interpreter.slug
    changes = _script(
        directory / "first",
        """
        import builtins, colorsys, json, logging, os, re, signal, sys, tempfile
        json.LEAKED = "a module global"
        json.dumps = None
        re.compile("(leak)+")
        os.environ["LEAKED"] = "environ"
        os.putenv("LEAKED_C", "C environ")
        sys.path.append("/leaked")
        sys.modules["leaked_module"] = json
        builtins.LEAKED = "builtins"
        logging.getLogger().addHandler(logging.StreamHandler())
        tempfile.tempdir = "/leaked"
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        os.umask(0o077)
        os.chdir("/")
        sys.setrecursionlimit(50)
        MAIN_GLOBAL = "leaked"
        print("changed")
        """,
    )
    check = _script(
        directory / "second",
        """
        import builtins, json, logging, os, re, signal, subprocess, sys, tempfile
        print(hasattr(json, "LEAKED"), json.dumps is not None, "LEAKED" in os.environ, "/leaked" in sys.path)
        print("leaked_module" in sys.modules, "colorsys" in sys.modules, hasattr(builtins, "LEAKED"))
        print(logging.getLogger().handlers, tempfile.tempdir, signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL, oct(os.umask(0o022)))
        print(os.getcwd() == os.path.dirname(__file__), sys.getrecursionlimit(), "MAIN_GLOBAL" in globals())
        subprocess.run(["/bin/sh", "-c", "echo C environ: ${LEAKED_C-unset}"])
        """,
    )
    assert helper.run(changes, env=REQUEST_ENV, argv0=interpreter.path) == Run(0, b"changed\n", b"")
    expected = fresh(interpreter.path, check, env=REQUEST_ENV, argv0=interpreter.path)
    # The subprocess's line first: Python's own stdout is a buffered pipe.
    assert expected.stdout == b"C environ: unset\nFalse True False False\nFalse False False\n[] None True 0o22\nTrue 1000 False\n"
    assert helper.run(check, env=REQUEST_ENV, argv0=interpreter.path) == expected


def test_an_edited_script_runs_its_new_code(interpreter, helper, workdir):
    """A script rewritten in place, keeping its size and modification time, runs its new code at the next request."""
    script = _script(workdir / "edited" / interpreter.slug, "print('version 1')\n")
    before = os.stat(script)
    assert helper.run(script, env=REQUEST_ENV, argv0=interpreter.path) == Run(0, b"version 1\n", b"")
    script.write_text("print('version 2')\n")
    os.utime(script, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(script)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert helper.run(script, env=REQUEST_ENV, argv0=interpreter.path) == Run(0, b"version 2\n", b"")


def test_no_descriptor_or_environment_of_the_server(interpreter, workdir):
    """A child has descriptors 0 to 2 only and exactly the request's environment, none of the helper's own."""
    script = _script(
        workdir / "nothing-of-the-server" / interpreter.slug,
        "import os\nprint(sorted(os.listdir('/proc/self/fd'), key=int))\nprint(sorted(os.environ))\n",
    )
    request_env = {"PATH": SERVER_PATH, "ONLY_THE_REQUESTS": "1"}
    with Helper(interpreter.path, {**HELPER_ENV, "ONLY_THE_SERVERS": "secret"}, preload=PRELOAD) as helper:
        got = helper.run(script, env=request_env, argv0=interpreter.path)
    expected = fresh(interpreter.path, script, env=request_env, argv0=interpreter.path)
    assert got == expected == Run(0, b"['0', '1', '2', '3']\n['LC_CTYPE', 'ONLY_THE_REQUESTS', 'PATH']\n", b"")


# -- the inherent differences, each shown and named


def test_inherent_the_parent_is_the_helper(interpreter, helper, workdir):
    """Inherent: a warm child's parent (os.getppid()) is the helper, not the server."""
    expected, got = both(interpreter, helper, _script(workdir / "ppid" / interpreter.slug, "import os; print(os.getppid())"))
    assert int(expected.stdout) == os.getpid()
    assert int(got.stdout) == helper.process.pid


def test_inherent_proc_cmdline_and_environ_are_the_helpers(interpreter, helper, workdir):
    """Inherent: /proc/self/cmdline and /proc/self/environ (the kernel's copies) are the helper's, not the script's."""
    script = _script(
        workdir / "proc" / interpreter.slug,
        "for name in ('cmdline', 'environ'):\n    print(open(f'/proc/self/{name}', 'rb').read().split(b'\\0')[:-1])\n",
    )
    expected, got = both(interpreter, helper, script)
    assert expected.stdout == b"%r\n%r\n" % (
        [os.fsencode(interpreter.path), os.fsencode(script)],
        [b"%s=%s" % (name.encode(), value.encode()) for name, value in REQUEST_ENV.items()],
    )
    assert got.stdout == b"%r\n%r\n" % (
        [os.fsencode(arg) for arg in helper.process.args],
        [b"%s=%s" % (name.encode(), value.encode()) for name, value in HELPER_ENV.items()],
    )


def test_inherent_sys_modules_holds_the_preloads(interpreter, helper, workdir):
    """Inherent: sys.modules holds the preloaded modules (and the helper's own imports) besides what a fresh interpreter has."""
    expected, got = both(interpreter, helper, _script(workdir / "modules" / interpreter.slug, "import sys; print(*sorted(sys.modules))"))
    fresh_modules, warm_modules = set(expected.stdout.split()), set(got.stdout.split())
    assert fresh_modules < warm_modules
    assert {b"json", b"email.message", b"logging", b"socket"} <= warm_modules - fresh_modules


def test_inherent_a_preloads_import_time_output_is_the_helpers(interpreter, workdir):
    """Inherent: what a preloaded module prints or warns when imported goes to the helper's stderr once, not to each script."""
    library = workdir / "noisy" / interpreter.slug
    _write(library, Case("import warnings\nprint('imported noisily')\nwarnings.warn('warned at import')\n", name="noisy.py"))
    script = _script(library / "scripts", "import noisy\nprint('script ran')\n")
    env = {"PYTHONPATH": str(library)}
    with open(library / "helper.log", "w+b") as log:
        with Helper(interpreter.path, {**HELPER_ENV, **env}, preload=[*PRELOAD, "noisy"], stdout=log, stderr=log) as helper:
            got = helper.run(script, env={**REQUEST_ENV, **env}, argv0=interpreter.path)
        log.seek(0)
        helper_output = log.read()
    expected = fresh(interpreter.path, script, env={**REQUEST_ENV, **env}, argv0=interpreter.path)
    assert expected.stdout == b"imported noisily\nscript ran\n"
    assert b"UserWarning: warned at import" in expected.stderr
    assert got == Run(0, b"script ran\n", b"")
    assert b"imported noisily" in helper_output and b"UserWarning: warned at import" in helper_output


def test_inherent_the_hash_seed_is_shared_by_requests(interpreter, helper, workdir):
    """Inherent: without PYTHONHASHSEED, every request shares the helper's string hash seed; fresh interpreters each draw one."""
    script = _script(workdir / "hash" / interpreter.slug, "print(hash('cgiserve'))")
    fresh_hashes = {fresh(interpreter.path, script, env=REQUEST_ENV).stdout for _ in range(3)}
    warm_hashes = {helper.run(script, env=REQUEST_ENV).stdout for _ in range(3)}
    assert len(fresh_hashes) == 3
    assert len(warm_hashes) == 1


def test_inherent_two_helper_frames_under_main(interpreter, helper, workdir):
    """
    Inherent: the script's module code runs under two frames of the
    helper's (its module code and run()): sys._getframe(1) and
    traceback.print_stack() show them, a warning whose stacklevel passes
    the script's top names warm_helper.py, and RecursionError comes a few
    frames sooner.
    """
    script = _script(
        workdir / "frames" / interpreter.slug,
        """
        import sys, warnings
        frame, below = sys._getframe(), []
        while frame.f_back is not None:
            frame = frame.f_back
            below.append((frame.f_code.co_filename, frame.f_code.co_name))
        print(below)
        def depth(n=1):
            try:
                return depth(n + 1)
            except RecursionError:
                return n
        print(depth())
        warnings.warn("beyond the top", stacklevel=2)
        """,
    )
    expected, got = both(interpreter, helper, script)
    helper_file = str(Path(helper.process.args[1]))
    fresh_below, fresh_depth = expected.stdout.decode().splitlines()
    warm_below, warm_depth = got.stdout.decode().splitlines()
    assert fresh_below == "[]"
    assert warm_below == repr([(helper_file, "run"), (helper_file, "<module>")])
    assert 0 < int(fresh_depth) - int(warm_depth) <= 3
    assert b"UserWarning: beyond the top" in expected.stderr and helper_file.encode() not in expected.stderr
    assert got.stderr.startswith(helper_file.encode() + b":")


def test_inherent_gc_freeze_and_preloads_atexit_callbacks(interpreter, helper, workdir):
    """Inherent: the preloaded objects are frozen (gc.get_freeze_count()), and atexit counts the preloads' callbacks (logging's)."""
    script = _script(workdir / "frozen" / interpreter.slug, "import atexit, gc; print(gc.get_freeze_count(), atexit._ncallbacks())")
    expected, got = both(interpreter, helper, script)
    fresh_frozen, fresh_callbacks = map(int, expected.stdout.split())
    warm_frozen, warm_callbacks = map(int, got.stdout.split())
    assert warm_frozen > fresh_frozen
    assert warm_callbacks == fresh_callbacks + 1


def test_inherent_warnings_of_the_teardown_name_the_helper(interpreter, workdir):
    """
    Inherent: the helper's own code tears the script's modules down, so a
    warning C code raises then (ResourceWarning for a file left open,
    shown under -X dev or -W) is placed at warm_helper.py, where a fresh
    interpreter, running no Python code then, says sys:1 (<sys>:0 from 3.13).
    """
    env = {"PYTHONDEVMODE": "1"}
    script = _script(workdir / "teardown-warning" / interpreter.slug, "left_open = open(__file__)\n")
    with Helper(interpreter.path, {**HELPER_ENV, **env}, preload=PRELOAD) as helper:
        expected, got = both(interpreter, helper, script, Case("", env=env))
    fresh_place, _, fresh_warning = expected.stderr.partition(b": ResourceWarning: ")
    warm_place, _, warm_warning = got.stderr.partition(b": ResourceWarning: ")
    assert fresh_place in (b"sys:1", b"<sys>:0")
    assert warm_place.startswith(helper.process.args[1].encode() + b":")
    # The helper's line follows, as the source of a warning's place does.
    assert warm_warning.splitlines()[0] == fresh_warning.rstrip(b"\n")
    assert fresh_warning.startswith(b"unclosed file <_io.TextIOWrapper")


def test_inherent_a_preloads_atexit_callback_runs_last(interpreter, helper, workdir):
    """
    Inherent: a preloaded module's own atexit callback (logging.shutdown)
    was registered before anything of the script's, so it runs last, even
    after a callback the script registered before it imported logging.
    """
    script = _script(
        workdir / "atexit-order" / interpreter.slug,
        """
        import atexit
        atexit.register(lambda: logging.getLogger("late").warning("logged at exit"))
        import logging
        class Handler(logging.Handler):
            def emit(self, record):
                print("emit", record.getMessage())
            def close(self):
                print("closed by logging.shutdown")
                super().close()
        logging.getLogger().addHandler(Handler())
        """,
    )
    expected, got = both(interpreter, helper, script)
    assert expected.stdout == b"closed by logging.shutdown\nemit logged at exit\n"
    assert got.stdout == b"emit logged at exit\nclosed by logging.shutdown\n"


def test_no_memory_of_earlier_requests(interpreter, helper, workdir):
    """A request finds no trace of an earlier request's arguments or environment anywhere in its memory."""
    script = _script(
        workdir / "memory" / interpreter.slug,
        """
        import sys
        # Built here, so that the only copy this code makes is this one.
        marker = "-".join(["earlier", "request", "secret"]).encode()
        found = 0
        with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as memory:
            for line in maps:
                address, permissions, *rest = line.split()
                if "r" not in permissions or rest[-1] in ("[vvar]", "[vsyscall]"):
                    continue
                start, end = (int(bound, 16) for bound in address.split("-"))
                try:
                    memory.seek(start)
                    found += memory.read(end - start).count(marker)
                except (OSError, OverflowError, ValueError):
                    continue
        print("copies", found)
        """,
    )
    baseline = helper.run(script, env=REQUEST_ENV)
    secret = "earlier-request-secret"
    env = {**REQUEST_ENV, "HTTP_AUTHORIZATION": secret * 3, "HTTP_COOKIE": secret + "x" * 5000}
    # The search finds them where they are: in the request that has them.
    assert helper.run(script, args=(secret, secret * 100), env=env) != baseline
    assert helper.run(script, env=REQUEST_ENV) == baseline
