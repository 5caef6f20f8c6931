# -*- test-case-name: tests.test_relay -*-
"""
What a worker's pipes carry to its master, which alone writes the server
log and the standard output, a whole line at a time.

A worker's descriptors: 0 is a pipe on which the master writes only a
newline, with C{--metrics}, to ask for a snapshot of the worker's figures
(its end means the master is gone); 1 is the worker's standard output (the
access log, with C{--access-log -}); 2 its standard error; 3 its log
events, as JSON records; 4 its snapshots, one JSON line each; 5 and on
the --listen sockets, in their order.
"""

from __future__ import annotations

import os

from twisted.logger import eventFromJSON, jsonFileLogObserver

MASTER_FD = 0
STDOUT_FD = 1
STDERR_FD = 2
EVENTS_FD = 3
SNAPSHOT_FD = 4
FIRST_SOCKET_FD = 5

# The key of the event a worker logs once it serves; the master tells of it itself.
READY = "cgiserve_worker_ready"

# A line this long without its end is passed on as it is: a worker cannot
# make its master hold more than this per pipe.
MAX_LINE = 1024 * 1024
# A snapshot with --metrics-per-script holds a histogram per script.
MAX_SNAPSHOT_LINE = 64 * MAX_LINE


def events_observer():
    """The worker's log observer: every event as a JSON record on its events pipe."""
    return jsonFileLogObserver(open(EVENTS_FD, "w", encoding="utf-8", errors="replace", closefd=False))


class Lines:
    """Splits what a pipe delivers into whole lines, holding at most C{max_line} bytes of an unfinished one."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._partial = b""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines, each with its newline, that C{data} completes."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        lines = [line + b"\n" for line in lines]
        if len(self._partial) >= self.max_line:
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


def write_line(fd: int, line: bytes) -> None:
    """Write a whole line to a pipe or file, however many writes it takes."""
    view = memoryview(line)
    while view:
        view = view[os.write(fd, view) :]
