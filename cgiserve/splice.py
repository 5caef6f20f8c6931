# -*- test-case-name: tests.test_splice,tests.test_e2e_delivery -*-
"""
A big script response moved from the script's stdout pipe to the client's
socket by the kernel (splice(2)), never copied through Python.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import termios

from twisted.internet import main

# One splice moves at most this much; the pipe is widened to match
# (pipe-max-size, 1 MiB by default, bounds it for an unprivileged server).
SPLICE_BYTES = 1024 * 1024

_F_SETPIPE_SZ = 1031
_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 0)
_BLOCKED = (errno.EAGAIN, errno.EWOULDBLOCK)


def chunk_head(length: int) -> bytes:
    """The line that opens an HTTP/1.1 chunk of C{length} bytes (RFC 9112 7.1)."""
    return b"%x\r\n" % length


def _pending(fd: int) -> int:
    """How many bytes wait in the pipe C{fd}."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


class Splice:
    """
    The body of one response, spliced from the pipe that C{reader} (the
    script's stdout L{cgiserve.spawn.OutputReader}) reads into the socket
    under C{transport}, a plain TCP or UNIX connection.

    The transport's buffer (the head, and what Python already read) goes
    first; a full socket pauses the reader through the connection's own
    producer chain, as a full buffer would, so a slow client still stops
    the script. With C{chunked} each run of bytes is framed as a chunk;
    with the C{writer}'s C{remaining} (its Content-Length still to send,
    or None) at most that many bytes are moved, and it is counted down.
    The request's C{sentLength} counts the bytes moved; the writer hears
    C{spliced()} when C{remaining} is used up and C{client_lost()} when
    the client has gone.
    """

    def __init__(self, reader, transport, request, writer, chunked: bool) -> None:
        self.reader = reader
        self.transport = transport
        self.socket = transport.socket.fileno()
        self.request = request
        self.writer = writer
        self.chunked = chunked
        # Framing not yet sent, and the bytes of the open chunk still to move.
        self._framing = b""
        self._chunk_left = 0
        try:
            fcntl.fcntl(reader.fd, _F_SETPIPE_SZ, SPLICE_BYTES)
        except OSError:
            pass
        reader.splice = self
        if self._buffered():
            self._wait_for_socket()

    def end(self) -> None:
        """Hand the pipe back to Python reads, and the framing owed to the transport's buffer."""
        self.reader.splice = None
        if self._framing:
            self.transport.write(self._framing)
            self._framing = b""

    def readable(self):
        """The pipe can be read: move what it holds, as C{doRead} would read it (None, or the reason it closed)."""
        if self._buffered():
            self._wait_for_socket()
            return None
        first = True
        while True:
            if self._framing and not self._send_framing():
                return None
            if self.chunked and not self._chunk_left:
                waiting = _pending(self.reader.fd)
                if not waiting:
                    # Readable with nothing in it: the script closed its output.
                    return self._eof() if first else None
                self._chunk_left = waiting
                self._framing = chunk_head(waiting)
                continue
            want = SPLICE_BYTES
            if self.chunked:
                want = self._chunk_left
            remaining = self.writer.remaining
            if remaining is not None:
                want = min(want, remaining)
            try:
                moved = os.splice(self.reader.fd, self.socket, want, flags=_NONBLOCK)
            except OSError as e:
                if e.errno not in _BLOCKED:
                    return self._lost()
                if _pending(self.reader.fd):
                    self._wait_for_socket()
                return None
            if not moved:
                return self._eof()
            first = False
            self.request.sentLength += moved
            if self.chunked:
                self._chunk_left -= moved
                if not self._chunk_left:
                    self._framing = b"\r\n"
            if remaining is not None:
                self.writer.remaining = remaining - moved
                if moved == remaining:
                    self.end()
                    self.writer.spliced()
                    return None

    def _buffered(self) -> bool:
        """Whether the transport still holds bytes that must reach the socket first."""
        transport = self.transport
        return len(transport.dataBuffer) > transport.offset or bool(transport._tempDataLen)

    def _send_framing(self) -> bool:
        try:
            sent = os.write(self.socket, self._framing)
        except OSError as e:
            if e.errno not in _BLOCKED:
                self._lost()
                return False
            sent = 0
        self._framing = self._framing[sent:]
        if self._framing:
            self._wait_for_socket()
            return False
        return True

    def _wait_for_socket(self) -> None:
        """
        Pause the script's output until the socket drains, exactly as a
        full transport buffer does: the transport resumes its producer
        (the connection, and through it the script) once it can write.
        """
        transport = self.transport
        if transport.producer is not None and not transport.producerPaused:
            transport.producerPaused = True
            transport.producer.pauseProducing()
        transport.startWriting()

    def _eof(self):
        self.end()
        return main.CONNECTION_DONE

    def _lost(self):
        """The client has gone (EPIPE, ECONNRESET): drop the connection as Twisted would on a failed send."""
        self.end()
        self.writer.client_lost()
        return None
