# -*- test-case-name: tests.test_relay -*-
"""
What a worker's pipes carry to its master, which alone writes the server
log and the standard output, a whole line at a time.

A worker's descriptors: 0 is a pipe the master never writes (its end
means the master is gone); 1 is the worker's standard output (the access
log, with C{--access-log -}); 2 its standard error; 3 its log events, as
JSON records; 4 and on the --listen sockets, in their order.
"""

from __future__ import annotations

from twisted.logger import eventFromJSON, jsonFileLogObserver

MASTER_FD = 0
STDOUT_FD = 1
STDERR_FD = 2
EVENTS_FD = 3
FIRST_SOCKET_FD = 4

# The key of the event a worker logs once it serves; the master tells of it itself.
READY = "cgiserve_worker_ready"

# A line this long without its end is passed on as it is: a worker cannot
# make its master hold more than this per pipe.
MAX_LINE = 1024 * 1024


def events_observer():
    """The worker's log observer: every event as a JSON record on its events pipe."""
    return jsonFileLogObserver(open(EVENTS_FD, "w", encoding="utf-8", errors="replace", closefd=False))


class Lines:
    """Splits what a pipe delivers into whole lines, holding at most L{MAX_LINE} bytes of an unfinished one."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines, each with its newline, that C{data} completes."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        lines = [line + b"\n" for line in lines]
        if len(self._partial) >= MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        return lines

    def rest(self) -> bytes:
        """What came after the last newline, once the pipe has closed."""
        rest, self._partial = self._partial, b""
        return rest


def worker_event(record: bytes, worker: int) -> dict | None:
    """The log event a record from worker C{worker} carries, its system naming the worker; None if it is not one."""
    try:
        event = eventFromJSON(record.decode("utf-8", "replace").strip("\x1e\n"))
    except Exception:  # not JSON, too deep, or a class marker Twisted cannot load: not a record
        return None
    if not isinstance(event, dict):
        return None
    level = event.get("log_level")
    system = event.get("log_system") or f"{event.get('log_namespace', '-')}#{getattr(level, 'name', '-')}"
    event["log_system"] = f"{system} worker {worker}"
    return event
