"""Splice: a response body moved from a real pipe to a real socket, with HTTP/1.1 framing, limits and back-pressure."""

from __future__ import annotations

import os
import random
import socket

import pytest
from twisted.internet import main

from cgiserve.splice import SPLICE_BYTES, Splice, chunk_head
from tests.http import dechunk

KiB = 1024


class FakeTransport:
    """What Splice uses of a Twisted TCP transport: its socket, its buffer, its producer and writing."""

    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.socket = sock
        self.dataBuffer = buffered
        self.offset = 0
        self._tempDataLen = 0
        self.producer = FakeProducer()
        self.producerPaused = False
        self.writing = False
        self.written = b""

    def startWriting(self) -> None:
        self.writing = True

    def write(self, data: bytes) -> None:
        self.written += data


class FakeProducer:
    paused = 0

    def pauseProducing(self) -> None:
        self.paused += 1


class Reader:
    """The script's stdout reader: the read end of a pipe."""

    splice = None

    def __init__(self, fd: int) -> None:
        self.fd = fd


class Request:
    sentLength = 0


class Writer:
    def __init__(self, remaining=None) -> None:
        self.remaining = remaining
        self.spliced_calls = 0
        self.lost_calls = 0

    def spliced(self) -> None:
        self.spliced_calls += 1

    def client_lost(self) -> None:
        self.lost_calls += 1


@pytest.fixture
def pipe():
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def sockets():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


def make(pipe, sockets, chunked=False, remaining=None, buffered=b""):
    transport = FakeTransport(sockets[0], buffered)
    splice = Splice(Reader(pipe[0]), transport, Request(), Writer(remaining), chunked)
    return splice, transport


def receive_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(1 << 20):
        data += chunk
    return data


def test_chunk_head_is_hex_length_and_crlf():
    assert chunk_head(1) == b"1\r\n"
    assert chunk_head(65536) == b"10000\r\n"


def test_attaching_marks_the_reader_and_ending_releases_it(pipe, sockets):
    splice, _ = make(pipe, sockets)
    assert splice.reader.splice is splice
    splice.end()
    assert splice.reader.splice is None


def test_unframed_body_arrives_whole_then_eof(pipe, sockets):
    """Without framing the bytes pass as they are; the writer's close ends the splice with CONNECTION_DONE."""
    splice, transport = make(pipe, sockets)
    data = random.Random(1).randbytes(48 * KiB)
    os.write(pipe[1], data)
    assert splice.readable() is None
    os.close(pipe[1])
    assert splice.readable() is main.CONNECTION_DONE
    assert splice.reader.splice is None
    sockets[0].shutdown(socket.SHUT_WR)
    assert receive_all(sockets[1]) == data
    assert splice.request.sentLength == len(data)
    assert transport.written == b""


def test_chunked_body_is_framed_and_the_last_crlf_goes_to_the_transport(pipe, sockets):
    """Each run of bytes is one chunk; the CRLF after the last (owed when the pipe closes) joins the transport's buffer, before Twisted's last chunk."""
    splice, transport = make(pipe, sockets, chunked=True)
    pieces = [b"a" * 10, b"b" * 3000, b"c" * 40000]
    for piece in pieces:
        os.write(pipe[1], piece)
        assert splice.readable() is None
    os.close(pipe[1])
    assert splice.readable() is main.CONNECTION_DONE
    sockets[0].shutdown(socket.SHUT_WR)
    wire = receive_all(sockets[1]) + transport.written + b"0\r\n\r\n"
    body, complete = dechunk(wire)
    assert complete
    assert body == b"".join(pieces)
    assert wire.startswith(b"a\r\n" + b"a" * 10 + b"\r\nbb8\r\n")
    assert splice.request.sentLength == sum(map(len, pieces))


def test_remaining_bounds_what_moves_and_tells_the_writer(pipe, sockets):
    """With a Content-Length left to send, no byte beyond it moves: the rest stays in the pipe for Python to drop."""
    splice, _ = make(pipe, sockets, remaining=5000)
    os.write(pipe[1], b"x" * 8000)
    assert splice.readable() is None
    assert (splice.writer.spliced_calls, splice.writer.remaining) == (1, 0)
    assert splice.reader.splice is None
    assert os.read(pipe[0], 10000) == b"x" * 3000
    sockets[0].shutdown(socket.SHUT_WR)
    assert receive_all(sockets[1]) == b"x" * 5000


def test_nothing_moves_while_the_transport_holds_bytes(pipe, sockets):
    """The head and earlier body in Twisted's buffer go first: the splice waits for the transport to drain."""
    splice, transport = make(pipe, sockets, buffered=b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.producerPaused and transport.producer.paused == 1 and transport.writing
    os.write(pipe[1], b"body")
    assert splice.readable() is None
    assert os.read(pipe[0], 10) == b"body"


def test_full_socket_pauses_the_script_through_the_transport(pipe, sockets):
    """A client that does not read: the splice stops with bytes still in the pipe and asks the transport to say when it can write."""
    ours, _theirs = sockets
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    splice, transport = make(pipe, sockets)
    written = 0
    for _ in range(64):
        try:
            written += os.write(pipe[1], b"y" * (16 * KiB))
        except BlockingIOError:
            break
        assert splice.readable() is None
        if transport.writing:
            break
    assert transport.writing and transport.producerPaused and transport.producer.paused == 1
    assert 0 < splice.request.sentLength < written + SPLICE_BYTES


def test_client_gone_is_told_to_the_writer(pipe, sockets):
    splice, _ = make(pipe, sockets)
    sockets[1].close()
    os.write(pipe[1], b"z" * 1000)
    assert splice.readable() is None
    assert splice.writer.lost_calls == 1
    assert splice.reader.splice is None
