"""Tests for cgiserve.process: one script run driven through a fake process, a fake clock and a recording killpg."""

from __future__ import annotations

import errno
import gc
import io
import signal
import weakref

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cgiserve.process import ScriptProtocol
from cgiserve.response import DOCUMENT, LOCAL_REDIRECT, ScriptResponse
from cgiserve.upload import FileBody

SCRIPT = "/srv/www/cgi-bin/hello.cgi"
REQUEST_ID = "req-0001"
PID = 4242
TIMEOUT = 30.0
KILL_GRACE = 5.0


class FakeProcessTransport(StringTransport):
    """
    The process side of a script run: stdin is the StringTransport's
    buffer and producer slot, pause/resume of stdout land in
    C{producerState}, and everything else the protocol may do to the
    process is recorded in C{calls}.
    """

    def __init__(self, pid: int = PID) -> None:
        super().__init__()
        self.pid = pid
        self.calls: list = []

    def closeStdin(self) -> None:
        self.calls.append("closeStdin")

    def pauseProducing(self) -> None:
        self.calls.append("pauseProducing")
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.calls.append("resumeProducing")
        super().resumeProducing()

    def signalProcess(self, signalID) -> None:
        # The protocol must signal the whole group through killpg instead.
        self.calls.append(("signalProcess", signalID))


class RecordingSink:
    """A ResponseSink that records every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def head_received(self, response, producer) -> None:
        self.calls.append(("head", response, producer))

    def body_received(self, data: bytes) -> None:
        self.calls.append(("body", data))

    def raw_received(self, data: bytes) -> None:
        self.calls.append(("raw", data))

    def output_ended(self) -> None:
        self.calls.append(("ended",))

    def script_failed(self, status: int, reason: str) -> None:
        self.calls.append(("failed", status, reason))


class RecordingBody:
    """A request body that records what it was attached to."""

    def __init__(self) -> None:
        self.attached_to: list = []

    def attach(self, process) -> None:
        self.attached_to.append(process)


class ScriptProtocolTestCase(SynchronousTestCase):
    """Shared set-up: a protocol connected to a fake process, with its log events captured."""

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.clock = MemoryReactorClock()
        self.sink = RecordingSink()
        self.kills: list[tuple[int, int]] = []
        self.killpg_error: dict[int, OSError] = {}
        self.probes: list[int] = []
        self.group_gone = False

    def killpg(self, pgid: int, signum: int) -> None:
        if signum == 0:
            # A probe for whether anything is left in the group.
            self.probes.append(pgid)
            if self.group_gone:
                raise ProcessLookupError(errno.ESRCH, "No such process")
            return
        self.kills.append((pgid, signum))
        if signum in self.killpg_error:
            raise self.killpg_error[signum]

    def connect(self, body=None, connect=True, **kwargs) -> ScriptProtocol:
        kwargs.setdefault("timeout", TIMEOUT)
        kwargs.setdefault("kill_grace", KILL_GRACE)
        self.protocol = ScriptProtocol(
            SCRIPT, REQUEST_ID, self.sink, body, clock=self.clock, killpg=self.killpg, **kwargs
        )
        self.transport = FakeProcessTransport()
        if connect:
            self.protocol.makeConnection(self.transport)
        return self.protocol

    def end(self, value=None) -> None:
        """The process ends as Twisted reports it: pipes closed, then processEnded."""
        self.protocol.outConnectionLost()
        self.protocol.errConnectionLost()
        self.protocol.processEnded(Failure(value if value is not None else ProcessDone(0)))

    def assert_freed_without_collector(self) -> None:
        """The sink, once the test lets it go, is freed at once: no cycle through the run keeps it."""
        sink = weakref.ref(self.sink)
        gc.disable()
        self.addCleanup(gc.enable)
        del self.sink
        self.assertIsNone(sink())

    def texts(self) -> list[str]:
        return [formatEvent(event) for event in self.events if event.get("log_namespace", "").startswith("cgiserve")]

    def warnings_about(self, needle: str) -> list[dict]:
        return [
            event
            for event in self.events
            if event.get("log_level") == LogLevel.warn and needle in formatEvent(event)
        ]


class StdinTests(ScriptProtocolTestCase):
    """What the script gets on stdin."""

    def test_no_body_closes_stdin(self):
        """A request without a body gives the script an empty, closed stdin at once."""
        self.connect()
        self.assertEqual(self.transport.calls, ["closeStdin"])

    def test_body_attached_to_process(self):
        """A request body is attached to the process transport, which keeps stdin open for it."""
        body = RecordingBody()
        self.connect(body)
        self.assertEqual(body.attached_to, [self.transport])
        self.assertNotIn("closeStdin", self.transport.calls)

    def test_file_body_reaches_stdin(self):
        """A FileBody's bytes are written to the process, then stdin is closed."""
        self.connect(FileBody(io.BytesIO(b"a=1&b=2")))
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        self.assertEqual(self.transport.value(), b"a=1&b=2")
        self.assertEqual(self.transport.calls, ["closeStdin"])

    def test_process_group_is_the_pid(self):
        """The script leads its own process group, so its pid is the group to signal."""
        self.connect()
        self.assertEqual(self.protocol.pgid, PID)


class StdoutTests(ScriptProtocolTestCase):
    """The script's output, parsed and handed to the sink."""

    def test_head_then_body(self):
        """A complete header block reaches the sink as a ScriptResponse with the protocol as producer, then the body."""
        self.connect()
        self.protocol.outReceived(b"Content-Type: text/plain\r\nStatus: 201 Made\r\n\r\nhello")
        self.protocol.outReceived(b", world")
        self.protocol.outConnectionLost()
        expected = ScriptResponse(DOCUMENT, 201, b"Made", ((b"Content-Type", b"text/plain"),))
        self.assertEqual(
            self.sink.calls,
            [("head", expected, self.protocol), ("body", b"hello"), ("body", b", world"), ("ended",)],
        )

    def test_head_without_body_start(self):
        """A read that ends exactly at the blank line gives no empty body call."""
        self.connect()
        self.protocol.outReceived(b"Location: /elsewhere\n\n")
        self.assertEqual(
            self.sink.calls,
            [("head", ScriptResponse(LOCAL_REDIRECT, 200, None, (), b"/elsewhere"), self.protocol)],
        )

    def test_head_split_across_reads(self):
        """A header block arriving one byte per read gives one head, after its last byte, and then the body."""
        self.connect()
        output = b"Content-Type: text/html\nX-Thing: 1\n\n<p>"
        for i in range(len(output) - 4):
            self.protocol.outReceived(output[i : i + 1])
            self.assertEqual(self.sink.calls, [], f"head reported after {i + 1} bytes")
        self.protocol.outReceived(output[-4:])  # the blank line and the body's start
        expected = ScriptResponse(DOCUMENT, 200, None, ((b"Content-Type", b"text/html"), (b"X-Thing", b"1")))
        self.assertEqual(self.sink.calls, [("head", expected, self.protocol), ("body", b"<p>")])

    def test_producer_pauses_and_resumes_output(self):
        """The producer handed to the sink pauses and resumes the script's output pipe."""
        self.connect()
        self.protocol.outReceived(b"Content-Type: text/plain\n\n")
        producer = self.sink.calls[0][2]
        producer.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        producer.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.transport.calls, ["closeStdin", "pauseProducing", "resumeProducing"])

    def test_malformed_header_fails_with_502(self):
        """A malformed header line answers 502 once, with the parser's reason."""
        self.connect()
        self.protocol.outReceived(b"Content-Type: text/plain\nno colon here\n\nbody")
        self.assertEqual(self.sink.calls, [("failed", 502, "malformed header line: b'no colon here'")])

    def test_invalid_head_fails_with_502(self):
        """A well-formed block that is not a valid response (a bogus Status) answers 502."""
        self.connect()
        self.protocol.outReceived(b"Status: 99 Low\n\n")
        self.assertEqual(self.sink.calls, [("failed", 502, "bogus Status: b'99 Low'")])

    def test_malformed_output_reported_once(self):
        """After a malformed head, later output and the end of output reach the sink no more."""
        self.connect()
        self.protocol.outReceived(b"bad\n")
        self.protocol.outReceived(b"Content-Type: text/plain\n\nmore")
        self.end(ProcessTerminated(signal=signal.SIGTERM))
        self.assertEqual(self.sink.calls, [("failed", 502, "malformed header line: b'bad'")])

    def test_malformed_output_logged(self):
        """A malformed head is logged as a warning naming the script, the request and the reason."""
        self.connect()
        self.protocol.outReceived(b"bad\n")
        [event] = self.warnings_about("malformed header line")
        self.assertEqual(event["script"], SCRIPT)
        self.assertEqual(event["request_id"], REQUEST_ID)
        self.assertEqual(formatEvent(event), f"{SCRIPT} [{REQUEST_ID}]: malformed header line: b'bad'")

    def test_malformed_output_stops_script(self):
        """A script whose output is malformed gets SIGTERM to its process group, then SIGKILL."""
        self.connect()
        self.protocol.outReceived(b"bad\n")
        self.assertEqual(self.kills, [(PID, signal.SIGTERM)])
        self.clock.advance(KILL_GRACE)
        self.assertEqual(self.kills, [(PID, signal.SIGTERM), (PID, signal.SIGKILL)])
        self.assertEqual(self.protocol.stopped_because, "bad output")

    def test_output_ends_inside_head(self):
        """Output that closes inside the header block answers 502 'ended before its headers' and stops the script."""
        self.connect()
        self.protocol.outReceived(b"Content-Type: text/plain\n")
        self.protocol.outConnectionLost()
        self.assertEqual(self.sink.calls, [("failed", 502, "script ended before its headers did")])
        self.assertEqual(self.kills, [(PID, signal.SIGTERM)])

    def test_output_ends_without_output(self):
        """Output that closes before any byte answers 502 'without any output'."""
        self.connect()
        self.protocol.outConnectionLost()
        self.assertEqual(self.sink.calls, [("failed", 502, "script ended without any output")])
        self.assertEqual(len(self.warnings_about("without any output")), 1)

    def test_nph_passes_raw_bytes(self):
        """An NPH script's output reaches the sink untouched, however it looks, then its end."""
        self.connect(nph=True)
        self.protocol.outReceived(b"HTTP/1.1 299 Custom\r\n")
        self.protocol.outReceived(b"no colon here\r\n\r\nbody")
        self.protocol.outConnectionLost()
        self.assertEqual(
            self.sink.calls,
            [("raw", b"HTTP/1.1 299 Custom\r\n"), ("raw", b"no colon here\r\n\r\nbody"), ("ended",)],
        )
        self.assertEqual(self.kills, [])

    def test_nph_without_any_output_fails_with_502(self):
        """An NPH script that writes nothing answers 502: an empty output is no HTTP response (RFC 3875 5)."""
        self.connect(nph=True)
        self.protocol.outConnectionLost()
        self.assertEqual(self.sink.calls, [("failed", 502, "script ended without any output")])


class StderrTests(ScriptProtocolTestCase):
    """The script's stderr, logged line by line and bounded."""

    def stderr_events(self) -> list[dict]:
        return [event for event in self.events if "line" in event or "dropped" in event]

    def test_lines_logged_with_script_and_request(self):
        """Each stderr line is one warning naming the script and the request, without its line end."""
        self.connect()
        self.protocol.errReceived(b"first\r\nsec")
        self.protocol.errReceived(b"ond\nthi")
        events = self.stderr_events()
        self.assertEqual([event["line"] for event in events], ["first", "second"])
        for event in events:
            self.assertEqual(event["log_level"], LogLevel.warn)
            self.assertEqual(event["script"], SCRIPT)
            self.assertEqual(event["request_id"], REQUEST_ID)
        self.assertEqual(formatEvent(events[0]), f"{SCRIPT} [{REQUEST_ID}] stderr: first")

    def test_partial_last_line_flushed_at_close(self):
        """A last line without a newline is logged when stderr closes, and only then."""
        self.connect()
        self.protocol.errReceived(b"one\ntrailing")
        self.assertEqual([event["line"] for event in self.stderr_events()], ["one"])
        self.protocol.errConnectionLost()
        self.assertEqual([event["line"] for event in self.stderr_events()], ["one", "trailing"])

    def test_undecodable_bytes_replaced(self):
        """Bytes that are not UTF-8 are logged as replacement characters rather than failing."""
        self.connect()
        self.protocol.errReceived(b"caf\xe9\n")
        self.assertEqual([event["line"] for event in self.stderr_events()], ["caf\ufffd"])

    def test_capped_at_max_stderr(self):
        """Stderr beyond max_stderr bytes is not logged; one final event says how many bytes were dropped."""
        self.connect(max_stderr=10)
        self.protocol.errReceived(b"abc\n")  # 4 bytes
        self.protocol.errReceived(b"defghijklmn\n")  # 12 bytes: 6 fit
        self.protocol.errReceived(b"more\n")  # 5 bytes, all dropped
        self.assertEqual([event["line"] for event in self.stderr_events()], ["abc"])
        self.protocol.errConnectionLost()
        events = self.stderr_events()
        self.assertEqual([event.get("line") for event in events], ["abc", "defghi", None])
        self.assertEqual(events[-1]["dropped"], 11)
        self.assertEqual(formatEvent(events[-1]), f"{SCRIPT} [{REQUEST_ID}] stderr: 11 more bytes not logged")
        self.assertEqual(events[-1]["log_level"], LogLevel.warn)

    def test_no_drop_event_under_the_cap(self):
        """Stderr within max_stderr is logged whole, with no 'not logged' event."""
        self.connect(max_stderr=10)
        self.protocol.errReceived(b"123456789\n")
        self.protocol.errConnectionLost()
        self.assertEqual([event.get("line") for event in self.stderr_events()], ["123456789"])


class ExitTests(ScriptProtocolTestCase):
    """How the script ended: logged, and reported through C{done}."""

    def test_exit_zero_logs_nothing(self):
        """A script exiting with status 0 logs nothing and fires done."""
        self.connect()
        self.protocol.outReceived(b"Content-Type: text/plain\n\n")
        self.end(ProcessDone(0))
        self.assertEqual(self.texts(), [])
        self.assertIsInstance(self.successResultOf(self.protocol.done), ProcessDone)

    def test_nonzero_exit_logged(self):
        """A non-zero exit status is logged once as a warning with the status, script and request."""
        self.connect()
        self.protocol.outReceived(b"Content-Type: text/plain\n\n")
        self.end(ProcessTerminated(exitCode=3))
        [event] = self.warnings_about("exited with status")
        self.assertEqual(formatEvent(event), f"{SCRIPT} [{REQUEST_ID}] exited with status 3")
        self.assertEqual(event["script"], SCRIPT)
        self.assertEqual(event["request_id"], REQUEST_ID)

    def test_signal_logged(self):
        """A script killed by a signal is logged with the signal number."""
        self.connect()
        self.protocol.outReceived(b"Content-Type: text/plain\n\n")
        self.end(ProcessTerminated(signal=signal.SIGSEGV))
        [event] = self.warnings_about("killed by signal")
        self.assertEqual(formatEvent(event), f"{SCRIPT} [{REQUEST_ID}] was killed by signal {int(signal.SIGSEGV)}")

    def test_stop_reason_logged_with_exit(self):
        """The exit of a stopped script is logged with why it was stopped."""
        self.connect()
        self.protocol.stop("client gone")
        self.end(ProcessTerminated(signal=signal.SIGTERM))
        [event] = self.warnings_about("killed by signal")
        self.assertEqual(
            formatEvent(event), f"{SCRIPT} [{REQUEST_ID}] was killed by signal {int(signal.SIGTERM)} (client gone)"
        )

    def test_done_fires_on_process_ended(self):
        """done fires with the exit status when the process ends, not before."""
        self.connect()
        self.protocol.outConnectionLost()
        self.protocol.errConnectionLost()
        self.assertNoResult(self.protocol.done)
        status = ProcessTerminated(exitCode=1)
        self.protocol.processEnded(Failure(status))
        self.assertIs(self.successResultOf(self.protocol.done), status)

    def test_ended_run_lets_its_response_go_without_the_collector(self):
        """A response that refers to its run (as a request does) is freed by reference counting once the run has ended."""
        self.connect()
        self.sink.run = self.protocol
        self.protocol.outReceived(b"Content-Type: text/plain\n\n")
        self.end(ProcessDone(0))
        self.assert_freed_without_collector()

    def test_refused_run_lets_its_response_go_without_the_collector(self):
        """A run that got no slot is over too: its response, answered 503 meanwhile, is freed by reference counting."""
        self.connect(connect=False)
        self.sink.run = self.protocol
        self.protocol.refuse()
        self.assertTrue(self.protocol.refused)
        self.assert_freed_without_collector()


class TimeoutTests(ScriptProtocolTestCase):
    """A script that runs too long: 504, SIGTERM to its group, SIGKILL after the grace period."""

    def test_timeout_answers_504_and_terminates(self):
        """At the timeout the client gets 504 'timeout' and the group SIGTERM; not a moment before."""
        self.connect()
        self.clock.advance(TIMEOUT - 0.1)
        self.assertEqual((self.sink.calls, self.kills), ([], []))
        self.clock.advance(0.1)
        self.assertEqual(self.sink.calls, [("failed", 504, "timeout")])
        self.assertEqual(self.kills, [(PID, signal.SIGTERM)])
        self.assertEqual([call for call in self.transport.calls if call[0] == "signalProcess"], [])

    def test_timeout_kills_after_grace(self):
        """kill_grace seconds after the SIGTERM the group gets SIGKILL."""
        self.connect()
        self.clock.advance(TIMEOUT)
        self.clock.advance(KILL_GRACE - 0.1)
        self.assertEqual(self.kills, [(PID, signal.SIGTERM)])
        self.clock.advance(0.1)
        self.assertEqual(self.kills, [(PID, signal.SIGTERM), (PID, signal.SIGKILL)])

    def test_kill_sent_even_after_exit(self):
        """The group gets SIGKILL even when the script itself exited on SIGTERM: what it started may not have."""
        self.connect()
        self.clock.advance(TIMEOUT)
        self.end(ProcessTerminated(signal=signal.SIGTERM))
        self.clock.advance(KILL_GRACE)
        self.assertEqual(self.kills, [(PID, signal.SIGTERM), (PID, signal.SIGKILL)])

    def test_no_kill_once_the_group_is_empty(self):
        """When nothing is left of the group at exit, the pending SIGKILL is cancelled (its id may be reused)."""
        self.connect()
        self.clock.advance(TIMEOUT)
        self.group_gone = True
        self.end(ProcessTerminated(signal=signal.SIGTERM))
        self.clock.advance(KILL_GRACE)
        self.assertEqual(self.probes, [PID])
        self.assertEqual(self.kills, [(PID, signal.SIGTERM)])

    def test_stop_reads_paused_output_again(self):
        """Stopping a script whose output a slow client paused resumes reading it, so its pipes can close."""
        self.connect()
        self.protocol.pauseProducing()
        self.protocol.stop("client gone")
        self.assertEqual(self.transport.calls[-2:], ["pauseProducing", "resumeProducing"])

    def test_kill_of_vanished_group_ignored(self):
        """ESRCH from killpg (the group is gone already) is not an error."""
        self.killpg_error[signal.SIGKILL] = OSError(errno.ESRCH, "No such process")
        self.connect()
        self.clock.advance(TIMEOUT)
        self.end(ProcessTerminated(signal=signal.SIGTERM))
        self.clock.advance(KILL_GRACE)
        self.assertEqual(self.kills, [(PID, signal.SIGTERM), (PID, signal.SIGKILL)])

    def test_terminate_of_vanished_group_ignored(self):
        """ESRCH on SIGTERM is ignored too, and SIGKILL is still scheduled."""
        self.killpg_error[signal.SIGTERM] = OSError(errno.ESRCH, "No such process")
        self.connect()
        self.protocol.stop("client gone")
        self.clock.advance(KILL_GRACE)
        self.assertEqual(self.kills, [(PID, signal.SIGTERM), (PID, signal.SIGKILL)])

    def test_other_kill_errors_propagate(self):
        """An OSError other than ESRCH from killpg is raised, not hidden."""
        self.killpg_error[signal.SIGKILL] = OSError(errno.EPERM, "Operation not permitted")
        self.connect()
        self.clock.advance(TIMEOUT)
        raised = self.assertRaises(OSError, self.clock.advance, KILL_GRACE)
        self.assertEqual(raised.errno, errno.EPERM)

    def test_other_terminate_errors_propagate(self):
        """An OSError other than ESRCH on SIGTERM is raised from stop."""
        self.killpg_error[signal.SIGTERM] = OSError(errno.EPERM, "Operation not permitted")
        self.connect()
        raised = self.assertRaises(OSError, self.protocol.stop, "client gone")
        self.assertEqual(raised.errno, errno.EPERM)

    def test_no_timeout_when_zero(self):
        """A timeout of 0 schedules nothing: the script may run for ever."""
        self.connect(timeout=0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_timeout_when_none(self):
        """A timeout of None schedules nothing either."""
        self.connect(timeout=None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10 * TIMEOUT)
        self.assertEqual((self.sink.calls, self.kills), ([], []))

    def test_timeout_cancelled_when_process_ends(self):
        """A script that ends before its timeout is never signalled, and leaves no call pending."""
        self.connect()
        self.protocol.outReceived(b"Content-Type: text/plain\n\nok")
        self.clock.advance(TIMEOUT / 2)
        self.end(ProcessDone(0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(TIMEOUT + KILL_GRACE)
        self.assertEqual(self.kills, [])
        self.assertNotIn("failed", [call[0] for call in self.sink.calls])

    def test_timeout_logged(self):
        """The timeout is logged as the reason for stopping the script."""
        self.connect()
        self.clock.advance(TIMEOUT)
        [event] = self.warnings_about("stopping")
        self.assertEqual(formatEvent(event), f"{SCRIPT} [{REQUEST_ID}] stopping: timeout")

    def test_output_after_timeout_ignored(self):
        """Output that arrives after the 504 is not passed to the sink."""
        self.connect()
        self.clock.advance(TIMEOUT)
        self.protocol.outReceived(b"Content-Type: text/plain\n\nlate")
        self.end(ProcessTerminated(signal=signal.SIGTERM))
        self.assertEqual(self.sink.calls, [("failed", 504, "timeout")])


class StopTests(ScriptProtocolTestCase):
    """Stopping a script on purpose: client gone, shutdown."""

    def test_client_gone_terminates_then_kills(self):
        """stop('client gone') sends SIGTERM, then SIGKILL after the grace period, and tells the sink nothing."""
        self.connect()
        self.protocol.stop("client gone")
        self.assertEqual(self.kills, [(PID, signal.SIGTERM)])
        self.clock.advance(KILL_GRACE)
        self.assertEqual(self.kills, [(PID, signal.SIGTERM), (PID, signal.SIGKILL)])
        self.assertEqual(self.sink.calls, [])

    def test_stop_cancels_timeout(self):
        """A stopped script's timeout is cancelled: only the SIGKILL remains scheduled."""
        self.connect()
        self.protocol.stop("client gone")
        [pending] = self.clock.getDelayedCalls()
        self.assertEqual(pending.getTime(), KILL_GRACE)
        self.clock.advance(TIMEOUT)
        self.assertEqual(self.sink.calls, [])

    def test_client_gone_before_head_not_blamed_on_script(self):
        """A script killed because its client left is not reported as ending before its headers."""
        self.connect()
        self.protocol.outReceived(b"Content-Type: text/pl")
        self.protocol.stop("client gone")
        self.end(ProcessTerminated(signal=signal.SIGTERM))
        self.assertEqual(self.sink.calls, [])
        self.assertEqual(self.warnings_about("ended before its headers"), [])

    def test_stop_twice_one_signal(self):
        """A second stop does nothing: one SIGTERM, one SIGKILL."""
        self.connect()
        self.protocol.stop("client gone")
        self.protocol.stop("shutdown")
        self.clock.advance(KILL_GRACE)
        self.assertEqual(self.kills, [(PID, signal.SIGTERM), (PID, signal.SIGKILL)])
        self.assertEqual(self.protocol.stopped_because, "client gone")
        self.assertEqual(self.sink.calls, [])

    def test_stop_after_exit_does_nothing(self):
        """Stopping a script that has already ended sends no signal and schedules nothing."""
        self.connect()
        self.protocol.outReceived(b"Content-Type: text/plain\n\n")
        self.end(ProcessDone(0))
        self.protocol.stop("client gone")
        self.assertEqual(self.kills, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(self.protocol.stopped_because)

    def test_stop_before_start_kills_once_started(self):
        """A protocol stopped while its process was being started signals nothing until it starts, then stops it."""
        self.connect(connect=False)
        self.protocol.stop("client gone")
        self.assertEqual(self.kills, [])
        self.assertEqual(self.protocol.stopped_because, "client gone")
        self.protocol.makeConnection(self.transport)
        self.assertEqual(self.kills, [(PID, signal.SIGTERM)])
        self.clock.advance(KILL_GRACE)
        self.assertEqual(self.kills, [(PID, signal.SIGTERM), (PID, signal.SIGKILL)])

    def test_shutdown_answers_503(self):
        """stop('shutdown') answers 503 and terminates the group."""
        self.connect()
        self.protocol.stop("shutdown")
        self.assertEqual(self.sink.calls, [("failed", 503, "shutdown")])
        self.assertEqual(self.kills, [(PID, signal.SIGTERM)])

    def test_stop_producing_is_client_gone(self):
        """stopProducing, the client connection's producer API, stops the script as 'client gone'."""
        self.connect()
        self.protocol.stopProducing()
        self.assertEqual(self.protocol.stopped_because, "client gone")
        self.assertEqual(self.kills, [(PID, signal.SIGTERM)])
        self.assertEqual(self.sink.calls, [])

    def test_stop_uses_killpg_not_signal_process(self):
        """Stopping signals the process group through killpg, never just the script's own process."""
        self.connect()
        self.protocol.stop("client gone")
        self.clock.advance(KILL_GRACE)
        self.assertEqual([call for call in self.transport.calls if call not in ("closeStdin", "resumeProducing")], [])


class SpawnFailedTests(ScriptProtocolTestCase):
    """A script that could not be executed at all."""

    def test_spawn_failed_answers_502_and_ends_the_run(self):
        """An OSError from the spawner answers 502, logs the reason and fires done, without signalling."""
        self.connect(connect=False)
        self.protocol.spawn_failed(Failure(OSError(errno.EACCES, "Permission denied")))
        self.assertEqual(self.sink.calls, [("failed", 502, "could not be executed: Permission denied")])
        self.assertEqual(self.kills, [])
        self.assertIsNone(self.successResultOf(self.protocol.done))
        self.assertEqual(len(self.warnings_about("could not be executed: Permission denied")), 1)

    def test_failed_start_lets_its_response_go_without_the_collector(self):
        """A run that never started lets its response go too."""
        self.connect(connect=False)
        self.sink.run = self.protocol
        self.protocol.spawn_failed(Failure(OSError(errno.EACCES, "Permission denied")))
        self.assert_freed_without_collector()
