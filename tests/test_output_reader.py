"""Tests for cgiserve.spawn.OutputReader: how a script's output pipe is read, on real pipes and a MemoryReactor."""

from __future__ import annotations

import fcntl
import os

import pytest
from twisted.internet import main
from twisted.internet.testing import MemoryReactor

from cgiserve.spawn import OutputReader


class Recorder:
    """Stands in for the process: records what each read delivers, and can pause its reader on the first."""

    def __init__(self, pause_on_data: bool = False) -> None:
        self.received: list[bytes] = []
        self.pause_on_data = pause_on_data
        self.reader: OutputReader | None = None

    def childDataReceived(self, name, data):
        self.received.append(data)
        if self.pause_on_data:
            self.reader.pauseProducing()


@pytest.fixture
def pipe():
    """A real pipe: the reader's end (as OutputReader needs it) and the writer's."""
    read_end, write_end = os.pipe()
    ends = {"read": read_end, "write": write_end}
    yield ends
    for fd in ends.values():
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def reader_on(pipe, process: Recorder) -> tuple[OutputReader, MemoryReactor]:
    reactor = MemoryReactor()
    reader = OutputReader(reactor, process, 1, pipe["read"])
    process.reader = reader
    return reader, reactor


def close_writer(pipe) -> None:
    os.close(pipe["write"])
    pipe["write"] = None


def test_registers_for_reading(pipe):
    """A new reader is watched by the reactor."""
    reader, reactor = reader_on(pipe, Recorder())
    assert reader in reactor.getReaders()
    assert reader.reading


def test_short_output_and_its_end_in_one_turn(pipe):
    """Output followed by the end of the pipe: one doRead delivers the output and reports the end."""
    reader, _ = reader_on(pipe, process := Recorder())
    os.write(pipe["write"], b"Content-Type: text/plain\r\n\r\nhello\n")
    close_writer(pipe)
    assert reader.doRead() is main.CONNECTION_DONE
    assert process.received == [b"Content-Type: text/plain\r\n\r\nhello\n"]


def test_short_output_with_the_script_still_running(pipe):
    """Output while the writer stays open: delivered, and the second look finds nothing (no end reported)."""
    reader, _ = reader_on(pipe, process := Recorder())
    os.write(pipe["write"], b"partial")
    assert reader.doRead() is None
    assert process.received == [b"partial"]


def test_empty_pipe_still_open(pipe):
    """Woken with nothing to read (EAGAIN): nothing delivered, nothing ended."""
    reader, _ = reader_on(pipe, process := Recorder())
    assert reader.doRead() is None
    assert process.received == []


def test_end_without_output(pipe):
    """The writer closed without writing: the end is reported at once."""
    reader, _ = reader_on(pipe, process := Recorder())
    close_writer(pipe)
    assert reader.doRead() is main.CONNECTION_DONE
    assert process.received == []


def test_a_full_read_leaves_the_rest_for_the_next_turn(pipe):
    """A read that fills the buffer is not followed by another: the rest waits for the reactor's next turn."""
    reader, _ = reader_on(pipe, process := Recorder())
    reader.bufferSize = 4
    os.write(pipe["write"], b"abcdefg")
    close_writer(pipe)
    assert reader.doRead() is None
    assert process.received == [b"abcd"]
    assert reader.doRead() is main.CONNECTION_DONE
    assert process.received == [b"abcd", b"efg"]


def test_paused_reader_does_not_read_on(pipe):
    """When the output's consumer pauses it (a slow client), the reader stops after that read: back-pressure holds."""
    reader, reactor = reader_on(pipe, process := Recorder(pause_on_data=True))
    os.write(pipe["write"], b"first")
    close_writer(pipe)
    assert reader.doRead() is None
    assert process.received == [b"first"]
    assert reader not in reactor.getReaders()
    assert not reader.reading
    reader.resumeProducing()
    assert reader in reactor.getReaders()
    assert reader.doRead() is main.CONNECTION_DONE


def test_read_error_is_a_lost_connection(pipe):
    """A read that fails for another reason than EAGAIN (here EBADF) reports the connection lost."""
    reader, _ = reader_on(pipe, Recorder())
    os.close(pipe["read"])
    pipe["read"] = None
    assert reader.doRead() is main.CONNECTION_LOST


def test_reads_without_blocking(pipe):
    """The reader's end is non-blocking, as Twisted makes it, and keeps its access mode."""
    reader_on(pipe, Recorder())
    flags = fcntl.fcntl(pipe["read"], fcntl.F_GETFL)
    assert flags & os.O_NONBLOCK
    assert flags & os.O_ACCMODE == os.O_RDONLY
