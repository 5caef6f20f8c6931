"""A blocking client of the warm Python helper, for tests: a script run through the helper, or by a fresh interpreter."""

from __future__ import annotations

import array
import errno
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cgiserve import warm_helper
from cgiserve.warm_helper import EXITED, QUIT, READY, STARTED, decode_reply, encode_run

HELPER = Path(warm_helper.__file__)
_SECONDS = 20


@dataclass(frozen=True)
class Run:
    """How a script ended (C{subprocess}'s returncode: negative for a signal) and what it wrote."""

    returncode: int
    stdout: bytes
    stderr: bytes


def _env_entries(env: dict[str, str]) -> list[bytes]:
    return [os.fsencode(name) + b"=" + os.fsencode(value) for name, value in env.items()]


def _read_to_end(fd: int) -> bytes:
    """Everything read from C{fd} until end of file (or, for a pty's master, until its last slave closes: EIO)."""
    chunks = []
    with open(fd, "rb", buffering=0) as f:
        while True:
            try:
                chunk = f.read(65536)
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _communicate(stdin_w: int, output_fds: list[int], data: bytes) -> list[bytes]:
    """Write C{data} to the script's stdin and read each of C{output_fds} to its end, concurrently."""
    out: dict[int, bytes] = {}

    def read(fd: int) -> None:
        out[fd] = _read_to_end(fd)

    readers = [threading.Thread(target=read, args=(fd,)) for fd in output_fds]
    for reader in readers:
        reader.start()
    with open(stdin_w, "wb", buffering=0) as f:
        try:
            f.write(data)
        except BrokenPipeError:
            pass
    for reader in readers:
        reader.join(_SECONDS)
    return [out.get(fd, b"") for fd in output_fds]


def _output_pipes(merge_stderr: bool, tty: bool) -> tuple[list[int], int, int]:
    """The script's ends for stdout and stderr, and ours to read: one pipe each, one pipe for both, or a pty for both."""
    if tty:
        ours, theirs = os.openpty()
        return [ours], theirs, theirs
    out_r, out_w = os.pipe()
    if merge_stderr:
        return [out_r], out_w, out_w
    err_r, err_w = os.pipe()
    return [out_r, err_r], out_w, err_w


def _output(outputs: list[bytes]) -> tuple[bytes, bytes]:
    """stdout and stderr; a merged stream is all stdout."""
    return outputs[0], outputs[1] if len(outputs) > 1 else b""


class Helper:
    """
    A warm helper of C{interpreter}, started with C{env} (and its own
    stdout and stderr as given, else ours); use as a context manager.
    """

    def __init__(self, interpreter: str, env: dict[str, str], preload=(), cwd: str = "/", stdout=None, stderr=None) -> None:
        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.process = subprocess.Popen(
            [interpreter, str(HELPER), "--preload", ",".join(preload)],
            stdin=theirs,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        theirs.close()
        # As the server: room for the largest request.
        self.channel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * warm_helper.MAX_MESSAGE_BYTES)
        self.channel.settimeout(_SECONDS)
        kind, fields = decode_reply(self.channel.recv(warm_helper.MAX_MESSAGE_BYTES))
        assert kind == READY, (kind, fields)
        self.failed_preloads = [name for name in fields[1].decode().split(",") if name]
        self._exits: dict[int, int] = {}
        self._count = 0

    def _next(self, kind: bytes, key: bytes) -> list[bytes]:
        """The fields of the next reply of C{kind} whose first field is C{key}, keeping exits seen meanwhile."""
        deadline = time.monotonic() + _SECONDS
        while time.monotonic() < deadline:
            got, fields = decode_reply(self.channel.recv(warm_helper.MAX_MESSAGE_BYTES))
            if got == EXITED:
                self._exits[int(fields[0])] = int(fields[1])
                if kind == EXITED and fields[0] == key:
                    return fields
            elif got == kind and fields[0] == key:
                return fields
            else:
                raise AssertionError(f"unexpected reply {got!r} {fields!r}")
        raise TimeoutError(f"no {kind!r} for {key!r}")

    def run(self, script, args=(), env=None, cwd=None, stdin: bytes = b"", argv0=None, merge_stderr=False, tty=False) -> Run:
        """
        Run C{script} through the helper with stdin C{stdin}; how it ended.
        With C{merge_stderr} its stderr is its stdout's pipe; with C{tty}
        both are one pty. Either way all output is C{Run.stdout}.
        """
        script = os.fspath(script)
        self._count += 1
        token = b"%d" % self._count
        in_r, in_w = os.pipe()
        ours, out_w, err_w = _output_pipes(merge_stderr, tty)
        message = encode_run(
            token,
            os.fsencode(cwd or os.path.dirname(script)),
            os.fsencode(script),
            os.fsencode(argv0 or self.process.args[0]),
            [os.fsencode(arg) for arg in args],
            _env_entries(env or {}),
        )
        self.channel.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [in_r, out_w, err_w]))])
        for fd in {in_r, out_w, err_w}:
            os.close(fd)
        pid = int(self._next(STARTED, token)[1])
        stdout, stderr = _output(_communicate(in_w, ours, stdin))
        status = self._exits.pop(pid) if pid in self._exits else int(self._next(EXITED, b"%d" % pid)[1])
        return Run(os.waitstatus_to_exitcode(status), stdout, stderr)

    def close(self) -> None:
        try:
            self.channel.send(QUIT)
        except OSError:
            pass
        self.channel.close()
        try:
            self.process.wait(_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(_SECONDS)

    def __enter__(self) -> "Helper":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fresh(interpreter: str, script, args=(), env=None, cwd=None, stdin: bytes = b"", argv0=None, merge_stderr=False, tty=False) -> Run:
    """
    Run C{script} as the kernel would for a #! line naming C{interpreter}:
    a fresh interpreter in its own session (C{merge_stderr} and C{tty} as
    for L{Helper.run}).
    """
    script = os.fspath(script)
    in_r, in_w = os.pipe()
    ours, out_w, err_w = _output_pipes(merge_stderr, tty)
    try:
        process = subprocess.Popen(
            [argv0 or interpreter, script, *args],
            executable=interpreter,
            stdin=in_r,
            stdout=out_w,
            stderr=err_w,
            env=env or {},
            cwd=cwd or os.path.dirname(script),
            start_new_session=True,
        )
    finally:
        for fd in {in_r, out_w, err_w}:
            os.close(fd)
    stdout, stderr = _output(_communicate(in_w, ours, stdin))
    try:
        process.wait(_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(_SECONDS)
        raise
    return Run(process.returncode, stdout, stderr)
