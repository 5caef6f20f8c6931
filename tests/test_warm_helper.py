"""Tests for cgiserve.warm_helper: the wire format, and the helper refusing what it cannot run (over a real socket)."""

from __future__ import annotations

import array
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from cgiserve.warm_helper import (
    EXITED,
    MAX_MESSAGE_BYTES,
    READY,
    REFUSED,
    STARTED,
    decode_reply,
    decode_run,
    encode_reply,
    encode_run,
    file_runner,
)
from tests.warm_client import Helper, Run

RUNS = [
    # (token, cwd, script, argv0, args, env)
    (b"1", b"/srv/cgi-bin", b"/srv/cgi-bin/a.py", b"/usr/bin/python3", [], []),
    (b"2", b"/", b"/a.py", b"python3", [b""], [b"PATH=/bin"]),
    (b"3", b"/d", b"/d/s.py", b"/usr/bin/python3", [b"a b", b"", b"--x", b"\xff\xfe"], [b"A=1", b"EMPTY=", b"EQ=a=b=c", b"B=\xe9"]),
    (b"", b"", b"", b"", [b"", b""], [b""]),
    (b"token", b"/w", b"/w/s.py", b"py", [b"%d" % i for i in range(100)], [b"V%d=%d" % (i, i) for i in range(100)]),
    (b"4", b"/w", b"/w/s.py", b"py", [b"7"], [b"7=7"]),
]


@pytest.mark.parametrize("fields", RUNS)
def test_run_round_trip(fields):
    """A run request decodes to exactly what it was encoded from."""
    token, cwd, script, argv0, args, env = fields
    assert decode_run(encode_run(token, cwd, script, argv0, args, env)) == (token, cwd, script, argv0, args, env)


def test_run_layout():
    """A run request is its NUL-separated fields: kind, token, cwd, script, argv0, the argument count, arguments, environment."""
    assert encode_run(b"t", b"/c", b"/c/s", b"py", [b"a", b"b"], [b"X=1"]) == b"run\0t\0/c\0/c/s\0py\x002\0a\0b\0X=1"


@pytest.mark.parametrize(
    "fields",
    [
        (b"t\0", b"/", b"/s", b"py", [], []),
        (b"t", b"/", b"/s", b"py", [b"a\0b"], []),
        (b"t", b"/", b"/s", b"py", [], [b"A=\0"]),
    ],
)
def test_run_refuses_a_nul(fields):
    """A field holding a NUL is refused when encoding, as it would shift the fields after it."""
    with pytest.raises(ValueError):
        encode_run(*fields)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"run",
        b"run\0t\0/c\0/s\0py",
        b"quit\0t\0/c\0/s\0py\x000",
        b"hello\0t\0/c\0/s\0py\x000",
        b"RUN\0t\0/c\0/s\0py\x000",
        b"run\0t\0/c\0/s\0py\0x",
        b"run\0t\0/c\0/s\0py\0-1",
        b"run\0t\0/c\0/s\0py\0 1\0a",
        b"run\0t\0/c\0/s\0py\0\0a",
        b"run\0t\0/c\0/s\0py\x002\0only one",
        b"run\0t\0/c\0/s\0py\x003",
    ],
)
def test_run_malformed(message):
    """A message that is not a well-formed run request is a ValueError."""
    with pytest.raises(ValueError):
        decode_run(message)


@pytest.mark.parametrize(
    "kind, fields",
    [
        (READY, [b"1234", b"", b"/usr/lib/python3.11"]),
        (READY, [b"1234", b"json,no_such_module", b"/usr/lib/python3.11"]),
        (STARTED, [b"7", b"4321"]),
        (REFUSED, [b"7", b"malformed run request"]),
        (REFUSED, [b"", b"2 descriptors instead of 3"]),
        (EXITED, [b"4321", b"256"]),
        (EXITED, [b"4321", b"0"]),
    ],
)
def test_reply_round_trip(kind, fields):
    """A reply decodes to its kind and fields."""
    assert decode_reply(encode_reply(kind, *fields)) == (kind, fields)


def test_reply_layout():
    """A reply is its kind and fields, NUL-separated."""
    assert encode_reply(EXITED, b"12", b"0") == b"exited\x0012\x000"


# -- the helper refusing, over a real socketpair

HELPER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


@pytest.fixture(scope="module")
def helper():
    """A helper of the interpreter under the tests (its base, not the venv: no Twisted), preloading nothing."""
    with Helper(getattr(sys, "_base_executable", None) or sys.executable, HELPER_ENV) as helper:
        # Once it answers, it is in its loop, with all its own descriptors open.
        assert _send(helper, b"hello", 0)[0] == REFUSED
        yield helper


@pytest.fixture(scope="module")
def sent_file():
    """A file of our own, whose descriptors the tests send."""
    directory = tempfile.mkdtemp(prefix="cgiserve-warm-")
    path = os.path.join(directory, "sent")
    open(path, "w").close()
    yield path
    shutil.rmtree(directory)


def _holds(pid: int, path: str) -> bool:
    """Whether process C{pid} has a descriptor of C{path} open (one it closes while we look does not count)."""
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(os.path.join(fds, fd)) == path:
                return True
        except FileNotFoundError:
            pass
    return False


def _send(helper: Helper, message: bytes, count: int, path: str = os.devnull) -> tuple[bytes, list[bytes]]:
    """Send C{message} with C{count} descriptors (of C{path}); the helper's reply."""
    fds = [os.open(path, os.O_RDWR) for _ in range(count)]
    try:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        helper.channel.sendmsg([message], ancillary)
    finally:
        for fd in fds:
            os.close(fd)
    return decode_reply(helper.channel.recv(MAX_MESSAGE_BYTES))


REQUEST = encode_run(b"9", b"/", b"/nonexistent.py", b"python3", [], [b"PATH=/bin"])


@pytest.mark.parametrize(
    "message, count, reply",
    [
        (b"hello", 3, (REFUSED, [b"", b"malformed run request"])),
        (b"run\0t1\0/", 3, (REFUSED, [b"t1", b"malformed run request"])),
        (b"run\0t2\0/\0/s\0py\x005\0a", 3, (REFUSED, [b"t2", b"run request with fewer arguments than it says"])),
        (b"run\0t3\0/\0/s\0py\0x", 0, (REFUSED, [b"t3", b"malformed run request"])),
        (REQUEST, 0, (REFUSED, [b"9", b"0 descriptors instead of 3"])),
        (REQUEST, 2, (REFUSED, [b"9", b"2 descriptors instead of 3"])),
        (REQUEST, 4, (REFUSED, [b"9", b"4 descriptors instead of 3"])),
    ],
)
def test_helper_refuses(helper, sent_file, message, count, reply):
    """A malformed request, or one with other than three descriptors, is REFUSED with its token, and its descriptors are closed."""
    assert _send(helper, message, count, sent_file) == reply
    # Answered in turn: by then, the helper is done with the first.
    assert _send(helper, b"hello", 0)[0] == REFUSED
    assert not _holds(helper.process.pid, sent_file)


def test_helper_still_serves_after_refusing(helper):
    """Refusals leave the helper serving: the next request runs."""
    assert _send(helper, b"hello", 3)[0] == REFUSED
    directory = Path(tempfile.mkdtemp(prefix="cgiserve-warm-"))
    try:
        script = directory / "script.py"
        script.write_text("print('served')\n")
        assert helper.run(script, env=HELPER_ENV) == Run(0, b"served\n", b"")
    finally:
        shutil.rmtree(directory)


def test_helper_quits():
    """On QUIT the helper exits 0."""
    with Helper(getattr(sys, "_base_executable", None) or sys.executable, HELPER_ENV) as helper:
        assert helper.process.poll() is None
    assert helper.process.returncode == 0


def test_helper_refuses_a_request_too_long(helper):
    """A request longer than MAX_MESSAGE_BYTES (cut short by the socket) is REFUSED, not run with what arrived."""
    message = encode_run(b"long", b"/", b"/s.py", b"py", [b"x" * MAX_MESSAGE_BYTES], [])
    try:
        # As root, past the system's cap on a socket's send buffer.
        helper.channel.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", socket.SO_SNDBUF), 4 * len(message))
        reply = _send(helper, message, 3)
    except OSError as e:
        pytest.skip(f"cannot send {len(message)} bytes in one message here: {e}")
    assert reply == (REFUSED, [b"long", b"run request longer than %d bytes" % MAX_MESSAGE_BYTES])


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(child) for child in f.read().split()}


def test_no_other_process_holds_a_requests_descriptors(helper, sent_file):
    """Once a request's child is started, neither the helper nor the spare forked after it holds the request's descriptors."""
    directory = Path(tempfile.mkdtemp(prefix="cgiserve-warm-"))
    try:
        script = directory / "script.py"
        script.write_text("import time\ntime.sleep(0.5)\n")
        message = encode_run(b"held", os.fsencode(directory), os.fsencode(script), b"python3", [], [b"PATH=/bin"])
        kind, fields = _send(helper, message, 3, sent_file)
        assert (kind, fields[0]) == (STARTED, b"held")
        child = int(fields[1])
        # The next spare is forked before the helper reads another request.
        assert _send(helper, b"hello", 0)[0] == REFUSED
        others = _children(helper.process.pid) - {child}
        assert others and _holds(child, sent_file)
        assert not any(_holds(pid, sent_file) for pid in {helper.process.pid, *others})
        assert decode_reply(helper.channel.recv(MAX_MESSAGE_BYTES)) == (EXITED, [b"%d" % child, b"0"])
    finally:
        shutil.rmtree(directory)


def test_helper_runs_a_large_request(helper):
    """A request far past a socket's default message size (300 KB of arguments) reaches its child whole."""
    directory = Path(tempfile.mkdtemp(prefix="cgiserve-warm-"))
    try:
        script = directory / "script.py"
        script.write_text("import sys\nprint([len(arg) for arg in sys.argv[1:]], sys.argv[-1][-3:])\n")
        args = ["x" * 100_000, "y" * 100_000, "z" * 99_997 + "end"]
        assert helper.run(script, args=args, env=HELPER_ENV) == Run(0, b"[100000, 100000, 100000] end\n", b"")
    finally:
        shutil.rmtree(directory)


# -- running a script's file


def _run_file(runner, source: bytes) -> dict:
    """Run C{source} from a file with C{runner} (see file_runner) in a fresh namespace; that namespace."""
    directory = tempfile.mkdtemp(prefix="cgiserve-warm-")
    try:
        path = os.path.join(directory, "script.py")
        with open(path, "wb") as f:
            f.write(source)
        namespace = {"__name__": "__main__"}
        open_script, call = runner
        call(*open_script(os.open(path, os.O_RDONLY), path, namespace))
        return namespace
    finally:
        shutil.rmtree(directory)


def test_file_runner_runs_a_file_as_the_interpreter_does():
    """The runner runs a file's code in the namespace, decoding it as the interpreter's own file runner does."""
    runner = file_runner()
    assert _run_file(runner, b"# -*- coding: latin-1 -*-\nx = '\xe9'\n")["x"] == "\xe9"
    with pytest.raises(SyntaxError, match="Non-UTF-8 code starting with '\\\\xe9'"):
        _run_file(runner, b"# caf\xe9\nx = 1\n")
    with pytest.raises(ZeroDivisionError):
        _run_file(runner, b"1 / 0\n")


def test_file_runner_without_ctypes(monkeypatch):
    """Without ctypes the runner compiles the file's bytes: the same code runs."""
    monkeypatch.setitem(sys.modules, "ctypes", None)
    runner = file_runner()
    assert runner[1] is exec
    assert _run_file(runner, b"# -*- coding: latin-1 -*-\nx = '\xe9'\n")["x"] == "\xe9"
    with pytest.raises(ZeroDivisionError):
        _run_file(runner, b"1 / 0\n")
