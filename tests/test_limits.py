"""The per-script resource limits: their value, the options prlimit and the warm helper get, and which limit a script hit."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import tempfile

import pytest

from cgiserve.limits import KiB, LimitedSpawner, Limits, check_executable, find_prlimit, limit_hit, size_text
from cgiserve.warm_helper import rlimits

MiB = KiB * KiB

ALL = Limits(cpu_seconds=2, memory_bytes=64 * MiB, processes=30, file_size_bytes=64 * KiB, files=16)


def test_no_limits_is_false():
    """Limits with nothing set are false: the server then starts scripts as before."""
    assert not Limits()
    assert Limits(files=16)


def test_rlimits_soft_and_hard():
    """Each limit set is both soft and hard, but the CPU one, whose hard limit is a second later (SIGXCPU first)."""
    assert ALL.rlimits() == [
        (resource.RLIMIT_CPU, 2, 3),
        (resource.RLIMIT_AS, 64 * MiB, 64 * MiB),
        (resource.RLIMIT_NPROC, 30, 30),
        (resource.RLIMIT_FSIZE, 64 * KiB, 64 * KiB),
        (resource.RLIMIT_NOFILE, 16, 16),
    ]
    assert Limits(files=16).rlimits() == [(resource.RLIMIT_NOFILE, 16, 16)]


def test_options_are_prlimits():
    """The limits go to prlimit, and to the warm helper, as prlimit's options."""
    assert ALL.options() == [
        b"--cpu=2:3",
        b"--as=67108864:67108864",
        b"--nproc=30:30",
        b"--fsize=65536:65536",
        b"--nofile=16:16",
    ]


def test_warm_helper_reads_the_same_options():
    """The warm helper's reading of those options gives the same rlimits."""
    assert rlimits(["--preload", "json,re"]) == []
    assert rlimits(["--preload", "", *(option.decode() for option in ALL.options())]) == ALL.rlimits()


@pytest.mark.parametrize(
    "name, text",
    [
        ("cpu", "--limit-cpu 2"),
        ("memory", "--limit-memory 64M"),
        ("processes", "--limit-processes 30"),
        ("file-size", "--limit-file-size 64K"),
        ("files", "--limit-files 16"),
    ],
)
def test_option_text(name, text):
    """A limit is named in the log as the operator would have written it."""
    assert ALL.option_text(name) == text
    assert ALL.value(name)


@pytest.mark.parametrize(
    "size, text",
    [(0, "0"), (1000, "1000"), (1024, "1K"), (1536, "1536"), (200 * MiB, "200M"), (2 * 1024 * MiB, "2G"), (MiB + 1, "1048577")],
)
def test_size_text(size, text):
    """Sizes show in the largest unit that divides them exactly."""
    assert size_text(size) == text


def test_beyond_a_hard_limit():
    """A limit above the server's own hard limit is refused by name; unlimited ones take any."""
    hard = {resource.RLIMIT_NOFILE: 1024}
    assert ALL.beyond(lambda which: hard.get(which, resource.RLIM_INFINITY)) is None
    hard[resource.RLIMIT_CPU] = 2
    assert ALL.beyond(lambda which: hard.get(which, resource.RLIM_INFINITY)) == (
        "--limit-cpu 2: above this server's own hard limit (2)"
    )


# -- which limit a script hit

PYTHON_FORK = [
    'Traceback (most recent call last):',
    '  File "/srv/www/forks.py", line 7, in <module>',
    "    pid = os.fork()",
    "          ^^^^^^^^^",
    "BlockingIOError: [Errno 11] Resource temporarily unavailable",
]


@pytest.mark.parametrize(
    "signum, exit_code, tail, expected",
    [
        (signal.SIGXCPU, None, [], ("cpu", "SIGXCPU", "--limit-cpu 2")),
        (signal.SIGXFSZ, None, [], ("file-size", "SIGXFSZ", "--limit-file-size 64K")),
        (None, 1, ["OSError: [Errno 27] File too large"], ("file-size", "File too large", "--limit-file-size 64K")),
        (None, 1, ["MemoryError"], ("memory", "out of memory", "--limit-memory 64M")),
        (None, 2, ["bash: xmalloc: cannot allocate 1048576 bytes (out of memory)"], ("memory", "out of memory", "--limit-memory 64M")),
        (None, 1, ["Out of memory!"], ("memory", "out of memory", "--limit-memory 64M")),
        (None, 1, ["mmap: Cannot allocate memory"], ("memory", "out of memory", "--limit-memory 64M")),
        (-6, None, ["terminate called after throwing an instance of 'std::bad_alloc'"], ("memory", "out of memory", "--limit-memory 64M")),
        (None, 1, PYTHON_FORK, ("processes", "no more processes", "--limit-processes 30")),
        (None, 2, ["sh: 1: Cannot fork"], ("processes", "no more processes", "--limit-processes 30")),
        (None, 254, ["bash: fork: retry: Resource temporarily unavailable"], ("processes", "no more processes", "--limit-processes 30")),
        (None, 1, ["RuntimeError: can't start new thread"], ("processes", "no more processes", "--limit-processes 30")),
        (None, 1, ["OSError: [Errno 24] Too many open files: '/dev/null'"], ("files", "Too many open files", "--limit-files 16")),
    ],
)
def test_limit_hit(signum, exit_code, tail, expected):
    """The signals the kernel sends, and the words for a refused resource on a failed script's stderr, tell the limit."""
    if signum == -6:
        signum = signal.SIGABRT
    hit = limit_hit(ALL, signum, exit_code, tail)
    assert tuple(hit) == expected
    assert str(hit) == f"{expected[1]}: {expected[2]}"


@pytest.mark.parametrize(
    "limits, signum, exit_code, tail",
    [
        (Limits(memory_bytes=MiB), signal.SIGXCPU, None, []),  # no CPU limit: not ours
        (Limits(cpu_seconds=1), signal.SIGKILL, None, []),  # the hard limit's SIGKILL is like any other
        (ALL, signal.SIGSEGV, None, []),  # a C program that failed to allocate, or any crash
        (ALL, None, 0, ["MemoryError"]),  # a script that survived it
        (ALL, None, 1, ["OSError: [Errno 23] Too many open files in system"]),  # ENFILE: the whole system's
        (ALL, None, 1, ["BlockingIOError: [Errno 11] Resource temporarily unavailable"]),  # EAGAIN, but no fork
        (Limits(cpu_seconds=1), None, 1, ["MemoryError"]),  # no memory limit: not ours to say
        (ALL, None, 1, ["Traceback (most recent call last):", "ValueError: bad"]),
    ],
)
def test_no_limit_hit(limits, signum, exit_code, tail):
    """Without a sure sign, or without that limit set, no limit is claimed."""
    assert limit_hit(limits, signum, exit_code, tail) is None


# -- starting under limits


@pytest.fixture
def files():
    top = tempfile.mkdtemp(prefix="cgiserve-limits-")
    yield top
    shutil.rmtree(top)


def _write(top: str, name: str, content: bytes) -> str:
    path = os.path.join(top, name)
    with open(path, "wb") as f:
        f.write(content)
    os.chmod(path, 0o755)
    return path


def test_check_executable(files):
    """A #! script and an ELF binary may be executed; any other file fails as exec would, ENOEXEC (prlimit would run it with sh)."""
    check_executable(_write(files, "a.sh", b"#!/bin/sh\n"))
    check_executable(os.path.realpath("/bin/sh"))
    for content in (b"echo hi\n", b"", b"#"):
        with pytest.raises(OSError) as caught:
            check_executable(_write(files, "plain", content))
        assert caught.value.errno == errno.ENOEXEC
    with pytest.raises(FileNotFoundError):
        check_executable(os.path.join(files, "missing"))


class _Protocol:
    limits = None


def test_limited_spawner_runs_prlimit(files):
    """The spawner starts prlimit with the limits and then the script's own argv, and tells the protocol the limits."""
    script = _write(files, "a.sh", b"#!/bin/sh\n")
    calls = []
    spawner = LimitedSpawner(ALL, lambda *args: calls.append(args) or "started", "/usr/bin/prlimit")
    protocol = _Protocol()
    argv = [script.encode(), b"form=1"]
    assert spawner("reactor", protocol, script, argv, {"A": "1"}, files, False) == "started"
    assert calls == [
        ("reactor", protocol, "/usr/bin/prlimit", [b"/usr/bin/prlimit", *ALL.options(), b"--", *argv], {"A": "1"}, files, False)
    ]
    assert protocol.limits is ALL


def test_limited_spawner_refuses_what_exec_would(files):
    """A file exec would refuse raises its OSError, so the script gets its 502 as without limits, and prlimit never starts."""
    script = _write(files, "plain", b"echo hi\n")
    calls = []
    spawner = LimitedSpawner(ALL, lambda *args: calls.append(args), "/usr/bin/prlimit")
    with pytest.raises(OSError):
        spawner(None, _Protocol(), script, [script.encode()], {}, files, True)
    assert calls == []


def test_find_prlimit(files):
    """prlimit is found on the PATH given, else where util-linux installs it."""
    assert find_prlimit() is not None
    assert find_prlimit(files) in ("/usr/bin/prlimit", "/bin/prlimit")
