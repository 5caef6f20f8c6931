# -*- test-case-name: tests.test_accesslog -*-
"""The access log: one line per request, in Combined Log Format or JSON, written once its script has ended."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone

from twisted.application import service
from twisted.logger import Logger
from twisted.web.http import datetimeToLogString

from cgiserve.addresses import client_end
from cgiserve.config import ACCESS_LOG_COMBINED as COMBINED
from cgiserve.config import ACCESS_LOG_JSON as JSON
from cgiserve.config import ACCESS_LOG_STDOUT as STDOUT
from cgiserve.relay import write_line

# nginx's status for a request whose client left before the response
# began; log analysers know it.
CLIENT_CLOSED = 499


def _append(path: str) -> int:
    """A descriptor that appends to the file at C{path}, created if need be."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)


# Not frozen: nothing changes an entry once made, and a frozen dataclass's
# __init__ (one object.__setattr__ per field) would cost a static request
# some 5% of its time with --metrics or --access-log.
@dataclass(slots=True)
class Entry:
    """
    What the access log says about one request, as plain values.

    C{started} is when the server began handling it (seconds since the
    epoch) and C{seconds} how long that took; byte counts are of bodies.
    The script fields stay C{None} for a request that ran no script.
    """

    started: float
    seconds: float
    request_id: str
    remote_addr: str
    remote_user: str | None
    method: bytes
    uri: bytes
    protocol: bytes
    status: int
    bytes_in: int
    bytes_out: int
    host: bytes | None
    referer: bytes | None
    user_agent: bytes | None
    completed: bool = True
    # Seconds from the start until the response head was written (HTTP/1.1), if it was.
    first_byte_seconds: float | None = None
    script: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    script_seconds: float | None = None
    stopped: str | None = None
    # For a script that never ran: why (cgiserve.record: busy, could not start, client gone).
    not_started: str | None = None
    # With --warm-python: whether the script started warm, and if not, why.
    warm: bool | None = None
    exec_reason: str | None = None
    # With --limit-*: the limit that stopped the script (cpu, memory, processes, file-size, files), when it can be told.
    limit: str | None = None


def _escape(value: bytes) -> str:
    """Apache's escaping for a log field: printable ASCII as is, except C{"} and C{\\}; the rest as C{\\xhh}."""
    out = []
    for byte in value:
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "backslashreplace")


def combined_line(entry: Entry) -> str:
    """
    The entry in Apache's Combined Log Format:
    C{host - user [time] "request line" status bytes "referer" "user-agent"}.
    """
    user = _escape(entry.remote_user.encode("utf-8", "surrogateescape")) if entry.remote_user else "-"
    request_line = _escape(b" ".join((entry.method, entry.uri, entry.protocol)))
    return '{host} - {user} {time} "{request}" {status} {size} "{referer}" "{agent}"'.format(
        host=entry.remote_addr or "-",
        user=user,
        time=datetimeToLogString(entry.started),
        request=request_line,
        status=entry.status,
        size=entry.bytes_out or "-",
        referer=_escape(entry.referer) if entry.referer is not None else "-",
        agent=_escape(entry.user_agent) if entry.user_agent is not None else "-",
    )


def json_line(entry: Entry) -> str:
    """The entry as one JSON object on one line; bytes that are not UTF-8 appear as C{\\xhh}."""
    record = {
        "time": datetime.fromtimestamp(entry.started, timezone.utc).isoformat(timespec="milliseconds"),
        "request_id": entry.request_id,
        "remote_addr": entry.remote_addr,
        "remote_user": entry.remote_user,
        "method": _text(entry.method),
        "uri": _text(entry.uri),
        "protocol": _text(entry.protocol),
        "host": _text(entry.host),
        "status": entry.status,
        "bytes_in": entry.bytes_in,
        "bytes_out": entry.bytes_out,
        "seconds": round(entry.seconds, 6),
        "completed": entry.completed,
        "referer": _text(entry.referer),
        "user_agent": _text(entry.user_agent),
        "script": entry.script,
        "exit_code": entry.exit_code,
        "signal": entry.signal,
        "script_seconds": None if entry.script_seconds is None else round(entry.script_seconds, 6),
        "stopped": entry.stopped,
        "warm": entry.warm,
        "exec_reason": entry.exec_reason,
        "limit": entry.limit,
    }
    return json.dumps(record, separators=(",", ":"))


_FORMATTERS = {COMBINED: combined_line, JSON: json_line}


def request_entry(request, started: float, now: float, completed: bool, **script) -> Entry:
    """
    The entry for a Twisted request that has finished (or lost its client)
    at C{now}; C{script} holds its script fields (L{script_fields}), if any.
    """
    bytes_in = request.body_received
    status = request.code if completed or request.startedWriting else CLIENT_CLOSED
    return Entry(
        started=started,
        seconds=max(now - started, 0.0),
        request_id=request.request_id,
        remote_addr=client_end(request.getClientAddress())[0],
        remote_user=request.remote_user,
        method=request.method or b"-",
        uri=request.uri or b"-",
        protocol=request.clientproto or b"-",
        status=status,
        bytes_in=bytes_in,
        bytes_out=request.sentLength,
        host=request.getHeader(b"host"),
        referer=request.getHeader(b"referer"),
        user_agent=request.getHeader(b"user-agent"),
        completed=completed,
        first_byte_seconds=None if request.head_written_at is None else max(request.head_written_at - started, 0.0),
        **script,
    )


def script_fields(run, status) -> dict:
    """
    How a script run (a L{ScriptProtocol}) ended, as an entry's script
    fields; C{status} is the C{ProcessDone} or C{ProcessTerminated} it ended with.
    """
    return dict(
        script=run.script,
        exit_code=getattr(status, "exitCode", None),
        signal=getattr(status, "signal", None),
        script_seconds=run.run_seconds,
        stopped=run.stopped_because,
        warm=run.warm,
        exec_reason=run.exec_reason,
        limit=run.limit_hit,
    )


def with_script(entry: Entry, run, status) -> Entry:
    """The entry completed with how its script run ended (L{script_fields})."""
    return dataclasses.replace(entry, **script_fields(run, status))


class AccessLog(service.Service):
    """
    Writes one line per request to a file (C{-}: standard output): a
    sink of the L{cgiserve.record.Recorder}, which hands it each request's
    entry once its script has ended and closes it once the last entry is in.

    The file is opened before twistd gives up root (so it may live where
    only root can write) and reopened when log rotation has moved or
    removed it.
    """

    _log = Logger()

    def __init__(self, path: str, log_format: str = COMBINED) -> None:
        self.path = path
        self.format = _FORMATTERS[log_format]
        self.fd = None
        self._identity = None
        self._troubled = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._open()

    def _open(self) -> None:
        if self.path == STDOUT:
            # fd 1 itself: twistd sends sys.stdout to its own log.
            self.fd = 1
            return
        self.fd = _append(self.path)
        stat = os.fstat(self.fd)
        self._identity = (stat.st_dev, stat.st_ino)

    def close(self) -> None:
        """Close the file; lines after that are dropped."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            if fd != 1:
                os.close(fd)

    def _reopen_if_moved(self) -> None:
        """Follow log rotation: reopen the path if the file we hold is no longer there."""
        try:
            stat = os.stat(self.path)
            if (stat.st_dev, stat.st_ino) == self._identity:
                return
        except FileNotFoundError:
            pass
        try:
            replacement = _append(self.path)
        except OSError as e:
            self._trouble("reopen", e)
            return
        os.close(self.fd)
        self.fd = replacement
        stat = os.fstat(replacement)
        self._identity = (stat.st_dev, stat.st_ino)

    def record(self, entry: Entry) -> None:
        """
        Write one entry as a line, with one write(2): appended so, lines
        from other processes (--workers) never interleave with it. A full
        disk costs the line, never the request.
        """
        if self.fd is None:
            return
        if self.path != STDOUT:
            self._reopen_if_moved()
        try:
            write_line(self.fd, (self.format(entry) + "\n").encode("utf-8"))
        except OSError as e:
            self._trouble("write to", e)
            return
        self._troubled = False

    def _trouble(self, what: str, error: OSError) -> None:
        """Log the first of a run of failures to write the log, not every one."""
        if not self._troubled:
            self._log.error("Cannot {what} the access log {path}: {error}", what=what, path=self.path, error=str(error))
            self._troubled = True
