# -*- test-case-name: tests.test_upload -*-
"""Request bodies on their way to a script's stdin, with back-pressure both ways."""

from __future__ import annotations

import array
import fcntl
import select
import socket
import termios

from twisted.internet import task
from twisted.protocols.basic import FileSender


# How often a paused upload's connection is checked for a client that left.
PEER_CHECK_SECONDS = 0.5

# A peer that reset the connection, or shut down its side of it (a FIN;
# Linux reports it at once through POLLRDHUP, without reading the data
# still queued before it; elsewhere only a reset is seen).
_PEER_DONE = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR

# A client's FIN queues behind the body it still has to send: while the
# server reads nothing, the window is shut and the FIN never arrives. Once
# an upload has stalled for a check, its receive buffer is widened, so the
# kernel takes (up to this, capped by net.core.rmem_max) what the client
# queued and its FIN with it. Not sooner: a buffer fixed by SO_RCVBUF ends
# the kernel's tuning of it for good, and a flowing upload wants that.
STALLED_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024

# A streamed body moves in reads of this size, and the script's stdin pipe
# holds as much (F_SETPIPE_SZ, where the kernel allows it): 200 MiB then
# take 200 reads and writes instead of 3,200, a third of the CPU. The
# server holds at most one such read per upload.
UPLOAD_CHUNK_BYTES = 1024 * 1024


class FileBody:
    """A body already received whole (a small form, a spooled chunked upload), read from its file."""

    def __init__(self, file) -> None:
        self.file = file
        self._sender = FileSender()
        # The pipe to the script holds 64 KiB on Linux.
        self._sender.CHUNK_SIZE = 64 * 1024

    def attach(self, process) -> None:
        """Copy the file to the script's stdin, then close it."""
        self._sender.beginFileTransfer(self.file, process).addCallbacks(
            lambda _: process.closeStdin(),
            # The script closed stdin before reading all of the body: its right.
            lambda _: None,
        )


class StreamedBody:
    """
    A body passed to the script as it arrives from the client.

    While the script's stdin is full, or before the script has started
    (it may wait for a slot), the client's connection stops being read, so
    the server holds at most one read of the body in memory. A script that
    closes stdin early makes the rest of the body be read and dropped.

    A connection that is not read would not notice its client leaving, so
    while paused its socket is checked every L{PEER_CHECK_SECONDS}, and
    aborted (stopping the script) once the client can no longer send the
    rest of the C{length} bytes (L{peer_gone}).
    """

    def __init__(self, network, length: int, clock=None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.network = network
        self._reader = socket_transport(network)
        if self._reader is not None:
            self._reader.bufferSize = UPLOAD_CHUNK_BYTES
        self.length = length
        self.received = 0
        self._peer_check = task.LoopingCall(self._check_peer)
        self._peer_check.clock = clock
        self.process = None
        self.complete = False
        self._pending: list[bytes] = []
        self._paused = False
        self._discarding = False
        self._widened = False
        self._pause()

    # -- from the client

    def write(self, data: bytes) -> None:
        """Body bytes from the client."""
        self.received += len(data)
        if self._discarding:
            return
        if self.process is None:
            self._pending.append(data)
        else:
            self.process.write(data)
        if self._paused or self.process is None:
            # The HTTP channel resumes the connection for its own reasons
            # (its send buffer drained); pause it again while the script
            # cannot take more.
            self._paused = False
            self._pause()

    def finish(self) -> None:
        """The client has sent the whole body."""
        self.complete = True
        self._narrow()
        self._resume()
        if self.process is not None and not self._discarding:
            self._close_stdin()

    # -- to the script

    def attach(self, process) -> None:
        """Start writing to the script's stdin, the body so far first."""
        self.process = process
        stdin = process.pipes.get(0)
        if stdin is not None:
            try:
                fcntl.fcntl(stdin.fileno(), fcntl.F_SETPIPE_SZ, UPLOAD_CHUNK_BYTES)
            except OSError:  # over the user's pipe quota (fs.pipe-user-pages-soft): the default size
                pass
        process.registerProducer(self, True)
        self._resume()
        pending, self._pending = self._pending, []
        for data in pending:
            process.write(data)
        if self.complete:
            self._close_stdin()

    def _close_stdin(self) -> None:
        # A writer that still has a producer resumes it when drained
        # instead of closing: unregister first, as FileSender does.
        self.process.unregisterProducer()
        self.process.closeStdin()

    def pauseProducing(self) -> None:
        self._pause()

    def resumeProducing(self) -> None:
        self._resume()

    def stopProducing(self) -> None:
        """The script's stdin closed: drop the rest of the body as it comes."""
        self._discarding = True
        self._pending = []
        self._resume()

    def abandon(self) -> None:
        """
        The response is over and the connection closes without reading the
        rest: the script's stdin ends where the body stopped.
        """
        if self.process is not None and not self._discarding:
            self._close_stdin()
        self._narrow()
        self.stopProducing()

    def _narrow(self) -> None:
        """Back to the connection's usual reads, for the requests that follow on it."""
        if self._reader is not None:
            vars(self._reader).pop("bufferSize", None)
            self._reader = None

    def _pause(self) -> None:
        if not self._paused and not self.complete:
            self._paused = True
            self.network.pauseProducing()
            if not self._peer_check.running:
                self._peer_check.start(PEER_CHECK_SECONDS, now=False)

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self.network.resumeProducing()
            if self._peer_check.running:
                self._peer_check.stop()

    def _check_peer(self) -> None:
        reader = socket_transport(self.network)
        if reader is None:
            return
        sock = reader.socket
        if peer_gone(sock, self.length - self.received):
            self._peer_check.stop()
            self.network.abortConnection()
        elif not self._widened:
            self._widened = True
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RECEIVE_BUFFER_BYTES)


def peer_gone(sock: socket.socket, missing: int) -> bool:
    """
    Whether a client whose request body still lacks C{missing} bytes has
    left: it reset the connection, or shut down its side with fewer bytes
    queued than it owes, so that the body can never be complete.
    """
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
        return True
    poller = select.poll()
    poller.register(sock, _PEER_DONE)
    if not poller.poll(0):
        return False
    queued = array.array("i", [0])
    fcntl.ioctl(sock, termios.FIONREAD, queued)
    # Over TLS the queue holds records, a little more than the bytes they
    # carry: a client that sent it all is never taken for one that left.
    return queued[0] < missing


def socket_transport(transport):
    """The transport that owns the socket under a transport (TCP, or TLS over TCP), if there is one."""
    while transport is not None and not hasattr(transport, "socket"):
        transport = getattr(transport, "transport", None)
    return transport
