"""Tests for cgiserve.upload: request bodies on their way to a script's stdin, with back-pressure both ways."""

from __future__ import annotations

import fcntl
import io
import os
import socket
import struct

import pytest

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cgiserve.upload import PEER_CHECK_SECONDS, UPLOAD_CHUNK_BYTES, FileBody, StreamedBody, peer_gone

# The Content-Length the streamed bodies here were announced with.
BODY_LENGTH = 1000


class FakeStdin:
    """
    The process transport as a body sees it (IConsumer plus closeStdin):
    every call lands in a shared event list, so the order across the
    process and the network can be checked.
    """

    def __init__(self, events: list, pipes=None) -> None:
        self.events = events
        self.producer = None
        self.streaming = None
        # The process's pipes by child descriptor, as Twisted's Process has them.
        self.pipes = pipes or {}

    def registerProducer(self, producer, streaming: bool) -> None:
        assert self.producer is None, "a producer is registered already"
        self.producer, self.streaming = producer, streaming
        self.events.append(("registerProducer", streaming))

    def unregisterProducer(self) -> None:
        self.producer = None
        self.events.append("unregisterProducer")

    def write(self, data: bytes) -> None:
        self.events.append(("write", data))

    def closeStdin(self) -> None:
        self.events.append("closeStdin")

    def written(self) -> bytes:
        return b"".join(event[1] for event in self.events if isinstance(event, tuple) and event[0] == "write")


class FakeNetwork:
    """The client connection as a push producer: pauses and resumes land in the shared event list."""

    def __init__(self, events: list) -> None:
        self.events = events
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.events.append("network.pause")

    def resumeProducing(self) -> None:
        self.paused = False
        self.events.append("network.resume")

    def abortConnection(self) -> None:
        self.events.append("network.abort")


class FileBodyTests(SynchronousTestCase):
    """A body already received whole, copied from its file."""

    def setUp(self) -> None:
        self.events: list = []
        self.stdin = FakeStdin(self.events)

    def pull_all(self) -> None:
        """Drive a pull producer the way a writer does: ask for more until it unregisters."""
        while self.stdin.producer is not None:
            self.stdin.producer.resumeProducing()

    def test_copies_file_then_closes_stdin(self):
        """The whole file reaches stdin, then the producer is unregistered and stdin closed."""
        FileBody(io.BytesIO(b"name=value&x=1")).attach(self.stdin)
        self.assertEqual(self.events, [("registerProducer", False)])
        self.pull_all()
        self.assertEqual(
            self.events,
            [("registerProducer", False), ("write", b"name=value&x=1"), "unregisterProducer", "closeStdin"],
        )

    def test_large_file_in_pipe_sized_chunks(self):
        """A large body is written in 64 KiB chunks, a pipe's capacity, and arrives intact."""
        data = bytes(range(256)) * 600  # 150 KiB
        FileBody(io.BytesIO(data)).attach(self.stdin)
        self.pull_all()
        writes = [event[1] for event in self.events if isinstance(event, tuple) and event[0] == "write"]
        self.assertEqual([len(chunk) for chunk in writes], [65536, 65536, len(data) - 131072])
        self.assertEqual(self.stdin.written(), data)
        self.assertEqual(self.events[-1], "closeStdin")

    def test_nothing_written_before_asked(self):
        """Nothing is read from the file until the writer asks for it."""
        FileBody(io.BytesIO(b"abc")).attach(self.stdin)
        self.assertEqual(self.stdin.written(), b"")

    def test_empty_file_closes_stdin(self):
        """An empty file closes stdin without writing anything."""
        FileBody(io.BytesIO(b"")).attach(self.stdin)
        self.pull_all()
        self.assertEqual(self.events, [("registerProducer", False), "unregisterProducer", "closeStdin"])

    def test_script_closing_stdin_early_is_fine(self):
        """A script that closes stdin before reading the whole body stops the copy without an error."""
        FileBody(io.BytesIO(b"x" * 200_000)).attach(self.stdin)
        self.stdin.producer.resumeProducing()
        self.stdin.producer.stopProducing()
        self.assertNotIn("closeStdin", self.events)
        self.assertEqual(self.flushLoggedErrors(), [])


class StreamedBodyTestCase(SynchronousTestCase):
    """Shared set-up: a StreamedBody between a fake network and a fake process, recording into one list."""

    def setUp(self) -> None:
        self.events: list = []
        self.network = FakeNetwork(self.events)
        self.stdin = FakeStdin(self.events)
        self.clock = Clock()
        self.body = StreamedBody(self.network, BODY_LENGTH, clock=self.clock)

    def since(self, mark: int) -> list:
        return self.events[mark:]


class StreamedBodyBeforeAttachTests(StreamedBodyTestCase):
    """While the script waits for a slot."""

    def test_network_paused_until_attached(self):
        """A new streamed body pauses the client connection at once."""
        self.assertEqual(self.events, ["network.pause"])
        self.assertTrue(self.network.paused)

    def test_data_held_and_network_repaused(self):
        """Data that arrives before the script starts is held, and pauses the connection again."""
        self.body.write(b"abc")
        self.assertEqual(self.events, ["network.pause", "network.pause"])

    def test_attach_writes_held_data_in_order(self):
        """On attach the process gets this body as a streaming producer, then the held chunks in order."""
        for chunk in (b"one,", b"two,", b"three"):
            self.body.write(chunk)
        mark = len(self.events)
        self.body.attach(self.stdin)
        self.assertIs(self.stdin.producer, self.body)
        self.assertEqual(
            self.since(mark),
            [
                ("registerProducer", True),
                "network.resume",
                ("write", b"one,"),
                ("write", b"two,"),
                ("write", b"three"),
            ],
        )

    def test_attach_resumes_network(self):
        """Attaching with nothing held resumes the connection and writes nothing."""
        self.body.attach(self.stdin)
        self.assertEqual(self.events, ["network.pause", ("registerProducer", True), "network.resume"])
        self.assertFalse(self.network.paused)

    def test_finish_before_attach(self):
        """A body complete before the script starts is written whole on attach, then stdin is closed."""
        self.body.write(b"all ")
        self.body.write(b"of it")
        self.body.finish()
        self.assertFalse(self.network.paused)
        mark = len(self.events)
        self.body.attach(self.stdin)
        self.assertEqual(
            self.since(mark),
            [
                ("registerProducer", True),
                ("write", b"all "),
                ("write", b"of it"),
                "unregisterProducer",
                "closeStdin",
            ],
        )

    def test_finish_resumes_network(self):
        """A complete body lets the connection be read again: it carries the next request, not this body."""
        self.body.write(b"x")
        self.body.finish()
        self.assertEqual(self.events[-1], "network.resume")
        self.assertFalse(self.network.paused)


class StreamedBodyBackPressureTests(StreamedBodyTestCase):
    """While the script is reading."""

    def setUp(self) -> None:
        super().setUp()
        self.body.attach(self.stdin)
        del self.events[:]

    def test_data_written_through(self):
        """Data after attach goes straight to stdin, without pausing the connection."""
        self.body.write(b"chunk")
        self.assertEqual(self.events, [("write", b"chunk")])

    def test_full_stdin_pauses_network(self):
        """When the script's stdin is full the connection is paused; when it drains it is resumed."""
        self.body.pauseProducing()
        self.assertEqual(self.events, ["network.pause"])
        self.body.resumeProducing()
        self.assertEqual(self.events, ["network.pause", "network.resume"])

    def test_pause_is_idempotent(self):
        """Two pauses from the process pause the connection once, and one resume resumes it."""
        self.body.pauseProducing()
        self.body.pauseProducing()
        self.body.resumeProducing()
        self.body.resumeProducing()
        self.assertEqual(self.events, ["network.pause", "network.resume"])

    def test_data_while_paused_repauses_network(self):
        """Data that arrives while stdin is full is still written, and pauses the connection again."""
        self.body.pauseProducing()
        self.network.resumeProducing()  # the HTTP channel resumes it for its own reasons
        self.body.write(b"more")
        self.assertEqual(
            self.events, ["network.pause", "network.resume", ("write", b"more"), "network.pause"]
        )
        self.assertTrue(self.network.paused)

    def test_finish_unregisters_before_closing(self):
        """finish unregisters the producer before closing stdin: a writer with a producer would not close."""
        self.body.write(b"last")
        self.body.finish()
        self.assertEqual(self.events, [("write", b"last"), "unregisterProducer", "closeStdin"])
        self.assertIsNone(self.stdin.producer)

    def test_finish_while_paused_resumes_network(self):
        """finish while stdin is full resumes the connection and still closes stdin after unregistering."""
        self.body.pauseProducing()
        self.body.finish()
        self.assertEqual(self.events, ["network.pause", "network.resume", "unregisterProducer", "closeStdin"])
        self.assertFalse(self.network.paused)

    def test_no_pause_after_finish(self):
        """Once the body is complete, a full stdin no longer pauses the connection."""
        self.body.finish()
        mark = len(self.events)
        self.body.pauseProducing()
        self.assertEqual(self.since(mark), [])


class StreamedBodyStoppedTests(StreamedBodyTestCase):
    """A script that closed its stdin before reading the whole body."""

    def test_stop_producing_drops_later_data(self):
        """After the script closes stdin, later data is not written."""
        self.body.attach(self.stdin)
        self.body.write(b"read")
        self.body.stopProducing()
        self.body.write(b"dropped")
        self.assertEqual(self.stdin.written(), b"read")

    def test_stop_producing_resumes_network(self):
        """A script that closed stdin while it was full lets the connection be read (and the rest dropped)."""
        self.body.attach(self.stdin)
        self.body.pauseProducing()
        self.body.stopProducing()
        self.assertEqual(self.events[-1], "network.resume")
        self.body.write(b"dropped")
        self.assertFalse(self.network.paused)

    def test_finish_after_stop_does_not_close_again(self):
        """finish after the script closed stdin neither writes nor closes stdin again."""
        self.body.attach(self.stdin)
        self.body.stopProducing()
        mark = len(self.events)
        self.body.write(b"dropped")
        self.body.finish()
        self.assertEqual(self.since(mark), [])
        self.assertTrue(self.body.complete)


class PeerCheckTests(StreamedBodyTestCase):
    """A paused upload still notices a client that left: over a real socket pair, the client's end closing."""

    def setUp(self) -> None:
        super().setUp()
        self.server_end, self.client_end = socket.socketpair()
        self.addCleanup(self.server_end.close)
        self.addCleanup(self.client_end.close)
        self.network.transport = type("TCP", (), {"socket": self.server_end})()

    def test_client_close_while_paused_aborts(self):
        """A client that shuts down its side before sending the body gets its connection aborted at the next check."""
        self.clock.advance(PEER_CHECK_SECONDS)
        self.assertNotIn("network.abort", self.events)
        self.client_end.shutdown(socket.SHUT_WR)
        self.clock.advance(PEER_CHECK_SECONDS)
        self.assertEqual(self.events[-1], "network.abort")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_client_that_sent_it_all_then_shut_down_is_not_gone(self):
        """A client that queued the rest of its body before shutting down its side is waiting for its answer."""
        self.body.write(b"x" * 400)
        self.client_end.sendall(b"y" * 600)
        self.client_end.shutdown(socket.SHUT_WR)
        self.clock.advance(PEER_CHECK_SECONDS * 3)
        self.assertNotIn("network.abort", self.events)

    def test_no_checks_while_reading(self):
        """Once the connection is read again, the checks stop."""
        self.body.attach(self.stdin)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.client_end.close()
        self.clock.advance(PEER_CHECK_SECONDS * 3)
        self.assertNotIn("network.abort", self.events)


class AbandonTests(StreamedBodyTestCase):
    """A response that is over before its upload."""

    def test_abandon_closes_stdin_and_drops_the_rest(self):
        """Abandoning an attached body ends the script's stdin and reads the rest of the upload into nothing."""
        self.body.attach(self.stdin)
        self.body.pauseProducing()
        mark = len(self.events)
        self.body.abandon()
        self.assertEqual(self.since(mark), ["unregisterProducer", "closeStdin", "network.resume"])
        self.body.write(b"late")
        self.assertEqual(self.stdin.written(), b"")

    def test_abandon_after_stdin_closed_closes_nothing(self):
        """A script that closed its stdin already is not closed again."""
        self.body.attach(self.stdin)
        self.body.stopProducing()
        mark = len(self.events)
        self.body.abandon()
        self.assertNotIn("closeStdin", self.since(mark))


def test_peer_gone_on_reset():
    """A connection reset by its peer is gone, whatever it still owed."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with server, client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            assert peer_gone(server, 0)


@pytest.mark.parametrize(
    ("sent", "shut_down", "missing", "gone"),
    [
        (b"", False, 10, False),
        (b"abc", False, 10, False),
        (b"", True, 10, True),
        (b"abc", True, 10, True),
        (b"0123456789", True, 10, False),
        (b"0123456789more", True, 10, False),
    ],
)
def test_peer_gone_counts_what_is_still_owed(sent, shut_down, missing, gone):
    """A peer that shut down its side is gone unless the bytes it queued before cover what the body still lacks."""
    server, client = socket.socketpair()
    with server, client:
        client.sendall(sent)
        if shut_down:
            client.shutdown(socket.SHUT_WR)
        assert peer_gone(server, missing) is gone


class _PipeEnd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class _ReadingTransport(FakeNetwork):
    """A network transport that reads a socket, with Twisted's class-wide read size."""

    bufferSize = 65536
    socket = None


class ChunkSizeTests(SynchronousTestCase):
    """A streamed upload moves in reads and pipe writes of UPLOAD_CHUNK_BYTES."""

    def test_stdin_pipe_widened(self):
        """Attaching widens the script's stdin pipe to UPLOAD_CHUNK_BYTES."""
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        events: list = []
        body = StreamedBody(FakeNetwork(events), BODY_LENGTH, clock=Clock())
        body.attach(FakeStdin(events, {0: _PipeEnd(write_end)}))
        self.assertEqual(fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ), UPLOAD_CHUNK_BYTES)

    def test_reads_widened_for_the_upload_only(self):
        """The connection reads UPLOAD_CHUNK_BYTES at a time while the body comes, its usual size after."""
        events: list = []
        network = _ReadingTransport(events)
        body = StreamedBody(network, BODY_LENGTH, clock=Clock())
        self.assertEqual(network.bufferSize, UPLOAD_CHUNK_BYTES)
        body.attach(FakeStdin(events))
        body.write(b"x" * BODY_LENGTH)
        body.finish()
        self.assertEqual(network.bufferSize, 65536)
        self.assertNotIn("bufferSize", vars(network))

    def test_abandoned_upload_narrows_reads(self):
        """An upload abandoned halfway also gives the connection back its usual read size."""
        events: list = []
        network = _ReadingTransport(events)
        body = StreamedBody(network, BODY_LENGTH, clock=Clock())
        body.attach(FakeStdin(events))
        body.abandon()
        self.assertNotIn("bufferSize", vars(network))

