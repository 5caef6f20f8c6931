"""Tests for cgiserve.relay: a worker's pipes split into whole lines, its log records made events naming it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.logger import LogLevel, Logger, LogPublisher, formatEvent, jsonFileLogObserver
from twisted.python import log as legacy

from cgiserve.relay import EVENTS_FD, MAX_LINE, READY, Lines, worker_event


def records(log) -> list[bytes]:
    """The records a worker's events observer writes for what C{log(logger)} logs, one per line, as its pipe carries them."""
    out = io.StringIO()
    log(Logger(namespace="cgiserve.site", observer=jsonFileLogObserver(out)))
    return Lines().feed(out.getvalue().encode("utf-8"))


class Who:
    """A value that JSON cannot hold: only its flattened attributes reach the master."""

    name = "alice"


# -- Lines


def test_partial_reads_join_into_a_line():
    """Reads without a newline are held until the one that ends their line."""
    lines = Lines()
    assert lines.feed(b"GET / ") == []
    assert lines.feed(b"200") == []
    assert lines.feed(b" 12\nnext") == [b"GET / 200 12\n"]


def test_several_lines_in_one_read():
    """One read holding several lines gives each, with its newline, empty ones too, in order."""
    lines = Lines()
    assert lines.feed(b"one\ntwo\n\nthree\nfo") == [b"one\n", b"two\n", b"\n", b"three\n"]
    assert lines.feed(b"ur\n") == [b"four\n"]
    assert lines.rest() == b""


def test_line_split_across_many_reads():
    """A line delivered a byte at a time comes out once, whole."""
    lines = Lines()
    line = b"x" * 999 + b"\n"
    out = [piece for byte in line for piece in lines.feed(bytes([byte]))]
    assert out == [line]


def test_unfinished_line_of_max_line_bytes_is_passed_on():
    """MAX_LINE bytes without a newline are passed on as they are, and no longer held."""
    lines = Lines()
    assert lines.feed(b"a" * (MAX_LINE - 1)) == []
    assert lines.feed(b"a") == [b"a" * MAX_LINE]
    assert lines.rest() == b""


def test_endless_line_is_held_in_bounded_pieces():
    """A pipe that never sends a newline makes its reader hold at most MAX_LINE bytes, and loses none."""
    lines = Lines()
    chunk = b"z" * 65536
    total = 10 * MAX_LINE + 12345
    out, sent = [], 0
    while sent < total:
        data = chunk[: total - sent]
        out += lines.feed(data)
        sent += len(data)
    assert [len(piece) for piece in out] == [MAX_LINE] * 10
    assert lines.rest() == b"z" * 12345


def test_rest_is_given_once():
    """rest() gives the unfinished tail once, then nothing."""
    lines = Lines()
    assert lines.feed(b"done\nhalf a li") == [b"done\n"]
    assert lines.rest() == b"half a li"
    assert lines.rest() == b""
    assert lines.feed(b"ne\n") == [b"ne\n"]


# -- worker_event


def test_event_keeps_its_text_and_names_namespace_level_and_worker():
    """A record of a new-style event gives it back formatted as logged, its system NAMESPACE#LEVEL worker N."""
    [record] = records(lambda log: log.warn("{who.name} sent {count:d} bytes: {text!r}", who=Who(), count=3, text="é"))
    assert record.startswith(b"\x1e") and record.endswith(b"}\n")
    event = worker_event(record, 7)
    assert formatEvent(event) == "alice sent 3 bytes: 'é'"
    assert event["log_level"] is LogLevel.warn
    assert event["log_namespace"] == "cgiserve.site"
    assert event["log_system"] == "cgiserve.site#warn worker 7"


def test_legacy_event_system_gets_the_worker():
    """A twisted.python.log event, whose system is "-", keeps it, followed by the worker's number."""
    events = []
    publisher = legacy.LogPublisher(
        observerPublisher=LogPublisher(), publishPublisher=LogPublisher(events.append), logBeginner=None
    )
    publisher.msg("Site starting on", 8080)
    out = io.StringIO()
    jsonFileLogObserver(out)(events[0])
    event = worker_event(out.getvalue().encode("utf-8"), 2)
    assert event["log_system"] == "- worker 2"
    assert formatEvent(event) == "Site starting on 8080"


def test_event_system_of_its_own_is_kept():
    """A system the event names itself comes before the worker, not the namespace and level."""
    [record] = records(lambda log: log.info("lost", log_system="HTTPChannel,3,127.0.0.1"))
    assert worker_event(record, 12)["log_system"] == "HTTPChannel,3,127.0.0.1 worker 12"


def test_ready_key_survives():
    """The ready event's key reaches the master, and other events do not have it."""

    def log(logger):
        logger.info("Worker {number} ready", number=1, **{READY: True})
        logger.info("Worker {number} reading its options", number=1)

    [ready, other] = records(log)
    assert worker_event(ready, 1)[READY] is True
    assert READY not in worker_event(other, 1)


@pytest.mark.parametrize(
    "record",
    [
        b"Traceback (most recent call last):\n",
        b"\x1e{\"log_format\": \"cut short\n",
        b"\x1e\n",
        b"\xff\xfe\n",
        b"\x1e[1, 2]\n",
        b'\x1e"text"\n',
        b"\x1e42\n",
        b"\x1enull\n",
    ],
)
def test_not_an_event(record):
    """A record that is not JSON, or JSON that is not an object, is not an event."""
    assert worker_event(record, 1) is None


# -- events_observer


def test_events_observer_writes_records_on_events_fd():
    """A worker's observer writes each event on descriptor 3 as a record the master reads back."""
    read_end, write_end = os.pipe()
    code = (
        "import os, sys\n"
        f"os.dup2({write_end}, {EVENTS_FD}); os.close({write_end})\n"
        "from twisted.logger import Logger\n"
        "from cgiserve.relay import READY, events_observer\n"
        "log = Logger(namespace='cgiserve.worker', observer=events_observer())\n"
        "log.info('Worker {number} ready', number=4, **{READY: True})\n"
        "log.error('bad {what!r}', what='x')\n"
    )
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=[write_end], cwd=Path(__file__).parent.parent
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    assert child.wait(timeout=30) == 0
    lines = Lines()
    ready, error = [worker_event(line, 4) for line in lines.feed(data)]
    assert lines.rest() == b""
    assert (formatEvent(ready), ready[READY], ready["log_system"]) == ("Worker 4 ready", True, "cgiserve.worker#info worker 4")
    assert (formatEvent(error), error["log_system"]) == ("bad 'x'", "cgiserve.worker#error worker 4")


@pytest.mark.parametrize(
    "record",
    [
        b'\x1e{"__class_uuid__": "00000000-0000-0000-0000-000000000000"}\n',
        b'\x1e{"__class_uuid__": 1}\n',
        b'\x1e{"__class_uuid__": "02e59486-f24d-46ad-8224-3acdf2a5732a"}\n',
        b"\x1e" + b"[" * 100000 + b"\n",
    ],
    ids=["unknown-class", "bad-class", "level-without-name", "too-deep"],
)
def test_record_twisted_cannot_load_is_not_an_event(record):
    """A record whose loading raises (an unknown class marker, nesting too deep) is not an event, never an exception."""
    assert worker_event(record, 1) is None
