# -*- test-case-name: tests.test_limits,tests.test_e2e_rlimits -*-
"""Per-script resource limits (RLIMIT_*): what they are, how a script starts under them, and which one stopped it."""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import signal
from dataclasses import dataclass
from typing import NamedTuple

KiB = 1024

class _Kind(NamedTuple):
    """
    One limit: its name (the access log's C{limit}), its L{Limits} field,
    the resource, prlimit's option for it (C{RLIMIT_} and that, upper
    case, is the resource's name, which the warm helper relies on) and
    cgiserve's option.
    """

    name: str
    field: str
    resource: int
    prlimit: str
    option: str


_KINDS = (
    _Kind("cpu", "cpu_seconds", resource.RLIMIT_CPU, "cpu", "--limit-cpu"),
    _Kind("memory", "memory_bytes", resource.RLIMIT_AS, "as", "--limit-memory"),
    _Kind("processes", "processes", resource.RLIMIT_NPROC, "nproc", "--limit-processes"),
    _Kind("file-size", "file_size_bytes", resource.RLIMIT_FSIZE, "fsize", "--limit-file-size"),
    _Kind("files", "files", resource.RLIMIT_NOFILE, "nofile", "--limit-files"),
)
_BY_NAME = {kind.name: kind for kind in _KINDS}
_BY_RESOURCE = {kind.resource: kind for kind in _KINDS}


@dataclass(frozen=True)
class Limits:
    """
    The resource limits every script starts under, 0 for none: seconds of
    CPU time (RLIMIT_CPU), bytes of address space (RLIMIT_AS), processes
    of the scripts' user (RLIMIT_NPROC), bytes of the largest file it may
    write (RLIMIT_FSIZE) and open descriptors (RLIMIT_NOFILE). Like every
    rlimit they are per process (each process a script starts has them,
    with counters of its own), but RLIMIT_NPROC, which counts every
    process and thread of the user. False when none is set.
    """

    cpu_seconds: int = 0
    memory_bytes: int = 0
    processes: int = 0
    file_size_bytes: int = 0
    files: int = 0

    def __bool__(self) -> bool:
        return any(getattr(self, kind.field) for kind in _KINDS)

    def rlimits(self) -> list[tuple[int, int, int]]:
        """The limits set, as (resource, soft, hard) for C{setrlimit}."""
        found = []
        for kind in _KINDS:
            value = getattr(self, kind.field)
            if value:
                # The CPU limit's hard one a second later: SIGXCPU (which
                # the log can name) first, SIGKILL if the script ignores it.
                found.append((kind.resource, value, value + 1 if kind.name == "cpu" else value))
        return found

    def options(self) -> list[bytes]:
        """The limits set as prlimit's options (C{--cpu=SOFT:HARD}...), which the warm helper takes too."""
        return [b"--%s=%d:%d" % (_BY_RESOURCE[which].prlimit.encode(), soft, hard) for which, soft, hard in self.rlimits()]

    def value(self, name: str) -> int:
        """The limit called C{name} (C{cpu}, C{memory}, C{processes}, C{file-size}, C{files}); 0 if not set."""
        return getattr(self, _BY_NAME[name].field)

    def option_text(self, name: str) -> str:
        """How the operator set the limit called C{name}: C{--limit-memory 64M}."""
        kind = _BY_NAME[name]
        value = getattr(self, kind.field)
        return f"{kind.option} {size_text(value) if kind.field.endswith('_bytes') else value}"

    def beyond(self, hard_limit) -> str | None:
        """
        The first limit above this process's own hard limit
        (C{hard_limit(resource)}, RLIM_INFINITY for none), which no script
        could be given, as a usage error's text; None when all can be.
        """
        for which, _, hard in self.rlimits():
            ceiling = hard_limit(which)
            if ceiling != resource.RLIM_INFINITY and hard > ceiling:
                return f"{self.option_text(_BY_RESOURCE[which].name)}: above this server's own hard limit ({ceiling})"
        return None


def size_text(size: int) -> str:
    """A byte count as the options take it, in the largest of G, M and K that divides it exactly."""
    for suffix, unit in (("G", KiB**3), ("M", KiB**2), ("K", KiB)):
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


# -- which limit a script hit


class LimitHit(NamedTuple):
    """A limit that stopped a script: its name (C{cpu}...), the evidence, and the option that set it."""

    name: str
    evidence: str
    option: str

    def __str__(self) -> str:
        return f"{self.evidence}: {self.option}"


# The signals the kernel sends for a limit: only these tell it for sure.
_SIGNALS = {signal.SIGXCPU: "cpu", signal.SIGXFSZ: "file-size"}

# What a script that failed says on its last lines of stderr when a limit
# refused it: the strerror of the errno the kernel returned (EMFILE, not
# ENFILE's "... in system"; EFBIG, which Python gets as it ignores
# SIGXFSZ; ENOMEM; EAGAIN from fork), or an interpreter's words for it
# (Python's MemoryError and "can't start new thread", dash's "Cannot fork",
# C++'s bad_alloc, perl's and bash's "out of memory"). Claimed only when
# that limit is set.
_STDERR_SIGNS = (
    ("files", re.compile(r"Too many open files(?! in system)"), "Too many open files"),
    ("file-size", re.compile(r"File too large"), "File too large"),
    ("memory", re.compile(r"MemoryError|Cannot allocate memory|[Oo]ut of memory|bad_alloc"), "out of memory"),
    (
        "processes",
        re.compile(r"Cannot fork|can't start new thread|fork.*Resource temporarily unavailable", re.DOTALL),
        "no more processes",
    ),
)

# How many of a script's last stderr lines L{limit_hit} is given: a
# Python traceback's last frame, its caret line and the exception.
STDERR_TAIL_LINES = 6


def limit_hit(limits: Limits, signum: int | None, exit_code: int | None, stderr_tail) -> LimitHit | None:
    """
    Which of C{limits} stopped a script that was killed by C{signum} or
    exited with C{exit_code}, its last lines of stderr being C{stderr_tail}
    (L{STDERR_TAIL_LINES} of them): SIGXCPU and SIGXFSZ say so for sure;
    a failed script's stderr may, in the kernel's or its interpreter's
    words. None when no limit can be told (a SIGKILL at the CPU limit's
    hard one, or a C program that crashes on a failed allocation, look
    like any other).
    """
    found = []
    if signum is not None:
        name = _SIGNALS.get(signum)
        if name is not None:
            found.append((name, signal.Signals(signum).name))
    elif not exit_code:
        return None
    text = "\n".join(stderr_tail)
    found.extend((name, evidence) for name, sign, evidence in _STDERR_SIGNS if sign.search(text))
    for name, evidence in found:
        if limits.value(name):
            return LimitHit(name, evidence, limits.option_text(name))
    return None


# -- starting scripts under the limits


def find_prlimit(path: str | None = None) -> str | None:
    """util-linux's prlimit, on C{path} (the server's PATH) or where Debian and others install it; None if missing."""
    search = os.pathsep.join(filter(None, [path if path is not None else os.environ.get("PATH"), "/usr/bin", "/bin"]))
    return shutil.which("prlimit", path=search)


def check_executable(path: str) -> None:
    """
    Raise the OSError the kernel's exec would for a file that is neither
    a binary (ELF) nor a #! script: prlimit's execvp would run it with
    /bin/sh instead, which a server without limits never does. A binary
    that may be executed but not read is left to exec (sh could not read
    it either).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except PermissionError:
        return
    if head[:2] != b"#!" and head != b"\x7fELF":
        raise OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC))


class LimitedSpawner:
    """
    A script runner's spawner that starts every script under C{limits}:
    C{spawner} starts util-linux's C{prlimit} (at C{prlimit}), which sets
    them on itself and execs the script. So they hold from the script's
    first instruction, everything it starts inherits them, and the server
    never has them. The protocol is told (C{limits}) so that it can say
    which one stopped the script.

    The server's own cost is a longer argv and one read of the script's
    first bytes; the second exec is the script's (README.rst, "Per-script
    limits", has the figures). Forking the server instead would cost it
    about 1.2 ms of its CPU and 2 ms of its reactor per script.
    """

    def __init__(self, limits: Limits, spawner, prlimit: str) -> None:
        self.limits = limits
        self.spawner = spawner
        self.prlimit = prlimit
        self._head = [os.fsencode(prlimit), *limits.options(), b"--"]

    def __call__(self, reactor, protocol, executable, argv, env, cwd, stdin=True):
        protocol.limits = self.limits
        check_executable(executable)
        return self.spawner(reactor, protocol, self.prlimit, [*self._head, *argv], env, cwd, stdin)
