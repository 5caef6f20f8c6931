"""The recorder: one entry per request, built once, handed to every sink when the request and its script have ended."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import resource, server

from cgiserve.config import ServerConfig
from cgiserve.record import BUSY, CLIENT_GONE, COULD_NOT_START, Recorder, not_started
from cgiserve.site import Site
from tests.test_accesslog import _Request, _Run


class _Sink:
    def __init__(self) -> None:
        self.entries = []
        self.closed = 0

    def record(self, entry) -> None:
        self.entries.append(entry)

    def close(self) -> None:
        self.closed += 1


def test_not_started():
    """A run without a process group was refused, could not be executed, or lost its client in the queue."""
    assert not_started(refused=True, ended=False) == BUSY
    assert not_started(refused=False, ended=True) == COULD_NOT_START
    assert not_started(refused=False, ended=False) == CLIENT_GONE


class RecorderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.sinks = [_Sink(), _Sink()]
        self.recorder = Recorder(self.sinks, self.reactor)
        self.recorder.startService()

    def test_every_sink_gets_the_same_entry_once(self):
        """One entry is built per request and handed to each sink, however often the request is ended."""
        request = _Request()
        self.recorder.watch(request)
        self.recorder.request_ended(request)
        self.recorder.request_ended(request)
        [first], [second] = (sink.entries for sink in self.sinks)
        self.assertIs(first, second)
        self.assertEqual((first.status, first.script, first.not_started), (200, None, None))

    def test_time_to_first_byte(self):
        """The entry says how long after its start the response head was written."""
        request = _Request()
        self.recorder.watch(request)
        self.reactor.advance(0.25)
        request.head_written_at = self.reactor.seconds()
        self.reactor.advance(1)
        self.recorder.request_ended(request)
        [entry] = self.sinks[0].entries
        self.assertEqual((entry.first_byte_seconds, entry.seconds), (0.25, 1.25))

    def test_waits_for_the_script(self):
        """A request whose script still runs is handed on when the script ends, with how it ended."""
        request, run = _Request(), _Run()
        request.script_run = run
        self.recorder.request_ended(request)
        self.assertEqual(self.sinks[0].entries, [])
        run.done.callback(ProcessTerminated(exitCode=3))
        [entry] = self.sinks[0].entries
        self.assertEqual((entry.script, entry.exit_code, entry.not_started), ("/srv/www/app.py", 3, None))

    def test_scripts_that_never_started(self):
        """Runs refused, not executable, or whose client left the queue are handed on at once, saying which."""
        for refused, ended, why in ((True, False, BUSY), (False, True, COULD_NOT_START), (False, False, CLIENT_GONE)):
            request, run = _Request(), _Run()
            run.pgid, run.refused, run.ended = None, refused, ended
            request.script_run = run
            self.recorder.request_ended(request)
            entry = self.sinks[0].entries[-1]
            self.assertEqual((entry.script, entry.not_started, entry.exit_code), ("/srv/www/app.py", why, None))

    def test_sinks_closed_after_the_last_waiting_entry(self):
        """At shutdown the sinks close once no entry waits for its script; later entries are dropped."""
        request, run = _Request(), _Run()
        request.script_run = run
        self.recorder.request_ended(request)
        [(close, args, kwargs)] = self.reactor.triggers["after"]["shutdown"]
        close(*args, **kwargs)
        self.assertEqual([sink.closed for sink in self.sinks], [0, 0])
        run.done.callback(ProcessDone(0))
        self.assertEqual([len(sink.entries) for sink in self.sinks], [1, 1])
        self.assertEqual([sink.closed for sink in self.sinks], [1, 1])
        self.recorder.request_ended(_Request())
        self.assertEqual([len(sink.entries) for sink in self.sinks], [1, 1])


class _Unanswered(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return server.NOT_DONE_YET


class SiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000)
        self.site = Site(_Unanswered(), ServerConfig(root="/nonexistent"), reactor=self.reactor)
        self.sink = _Sink()
        self.site.recorder = Recorder([self.sink], self.reactor)
        self.connection = self.site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 50000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 50000))
        self.connection.makeConnection(self.transport)

    def test_client_gone_reaches_the_recorder(self):
        """A request whose client leaves before its response is recorded at once, as 499, not completed."""
        self.connection.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.sink.entries, [])
        self.connection.connectionLost(Failure(ConnectionDone()))
        [entry] = self.sink.entries
        self.assertEqual((entry.status, entry.completed, entry.uri, entry.first_byte_seconds), (499, False, b"/slow", None))

    def test_time_to_first_byte_is_when_the_head_is_written(self):
        """The head's writing is timed for the recorder; the request is recorded once it finishes."""
        self.connection.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        [request] = self.connection._channel.requests
        self.reactor.advance(0.5)
        request.write(b"some")
        self.reactor.advance(0.25)
        request.finish()
        [entry] = self.sink.entries
        self.assertEqual((entry.status, entry.completed, entry.first_byte_seconds, entry.seconds), (200, True, 0.5, 0.75))
