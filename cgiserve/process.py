# -*- test-case-name: tests.test_process -*-
"""The ProcessProtocol of one script run: stdin in, stdout parsed, stderr logged, exit and kills reported."""

from __future__ import annotations

import collections
import errno
import os
import signal
from typing import Protocol

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from cgiserve.config import DEFAULT_KILL_GRACE_SECONDS, DEFAULT_MAX_STDERR_BYTES
from cgiserve.limits import STDERR_TAIL_LINES, limit_hit
from cgiserve.response import CGIResponseError, HeadParser, ScriptResponse, interpret


# What the client is told when its script is stopped before answering.
_ANSWERS = {"timeout": 504, "shutdown": 503}


class ResponseSink(Protocol):
    """Where a script's response goes: the HTTP side of a script run."""

    def head_received(self, response: ScriptResponse, producer) -> None:
        """The script's header block is complete; C{producer} pauses its output."""

    def body_received(self, data: bytes) -> None:
        """Body bytes after the header block."""

    def raw_received(self, data: bytes) -> None:
        """Output of an NPH script, a complete HTTP response passed through."""

    def output_ended(self) -> None:
        """The script closed its output after a valid response."""

    def script_failed(self, status: int, reason: str) -> None:
        """The run failed; answer C{status} if nothing was sent yet, else cut the response."""


class ScriptProtocol(protocol.ProcessProtocol):
    """
    Runs one script for one request.

    Feeds the request body to stdin, parses stdout's header block and
    hands the response to a L{ResponseSink}, logs stderr line by line, and
    logs how the script ended; C{done} fires then. L{stop} ends the
    script's whole process group: SIGTERM, then SIGKILL after
    C{kill_grace} seconds.
    """

    _log = Logger()
    # Set by the spawner (cgiserve.warm): whether a warm Python helper
    # forked the script, and if not, why it was exec'd.
    warm = False
    exec_reason: str | None = None
    # Set by the spawner (cgiserve.limits): the resource limits the script
    # started under, if any; once it has ended, the name of the one that
    # stopped it, when that can be told.
    limits = None
    limit_hit: str | None = None
    # Whether the run had no slot (runner.Busy; L{refuse}).
    refused = False

    def __init__(
        self,
        script: str,
        request_id: str,
        sink: ResponseSink,
        body=None,
        nph: bool = False,
        clock=None,
        timeout: float | None = None,
        kill_grace: float = DEFAULT_KILL_GRACE_SECONDS,
        max_stderr: int = DEFAULT_MAX_STDERR_BYTES,
        killpg=os.killpg,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.script = script
        self.request_id = request_id
        self.sink = sink
        self.body = body
        self.nph = nph
        self.clock = clock
        self.timeout = timeout
        self.kill_grace = kill_grace
        self.max_stderr = max_stderr
        self.killpg = killpg
        self.parser = None if nph else HeadParser()
        self.failed = False
        self.raw_seen = False
        self.stopped_because: str | None = None
        self.pgid: int | None = None
        self.ended = False
        # How long the script ran, in seconds, once it has ended.
        self.run_seconds: float | None = None
        self._started_at: float | None = None
        self._stderr = bytearray()
        self._stderr_logged = 0
        self._stderr_dropped = 0
        # Its last lines, which may tell a limit it hit.
        self._stderr_tail = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._timeout_call = None
        self._kill_call = None
        self.done = defer.Deferred()

    @property
    def started_at(self) -> float | None:
        """When the script started (the clock's seconds), or None if it has not."""
        return self._started_at

    # -- start

    def connectionMade(self) -> None:
        self.pgid = self.transport.pid
        if self.stopped_because is not None:
            # Stopped while it was being started.
            self._kill()
            return
        self._started_at = self.clock.seconds()
        if self.timeout:
            self._timeout_call = self.clock.callLater(self.timeout, self.stop, "timeout")
        if self.body is None:
            self.transport.closeStdin()
        else:
            self.body.attach(self.transport)

    # -- stdout

    def outReceived(self, data: bytes) -> None:
        if self.failed:
            return
        if self.parser is None:
            self.raw_seen = True
            self.sink.raw_received(data)
            return
        if self.parser.done:
            self.sink.body_received(data)
            return
        try:
            head = self.parser.feed(data)
            if head is None:
                return
            fields, rest = head
            response = interpret(fields)
        except CGIResponseError as e:
            self.fail(502, str(e))
            return
        self.sink.head_received(response, self)
        if rest:
            self.sink.body_received(rest)

    def outConnectionLost(self) -> None:
        if self.failed:
            return
        if self.parser is None and not self.raw_seen:
            self.fail(502, "script ended without any output")
            return
        if self.parser is not None:
            try:
                self.parser.end()
            except CGIResponseError as e:
                self.fail(502, str(e))
                return
        self.sink.output_ended()

    def fail(self, status: int, reason: str) -> None:
        """Give up on the script's output: log why, answer the client, stop the script."""
        self.failed = True
        self._log.warn(
            "{script} [{request_id}]: {reason}",
            script=self.script,
            request_id=self.request_id,
            reason=reason,
        )
        self.sink.script_failed(status, reason)
        if not self.ended:
            self.stop("bad output")

    # -- the response's producer: a slow client pauses the script's output

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.stop("client gone")

    # -- stderr

    def errReceived(self, data: bytes) -> None:
        room = self.max_stderr - self._stderr_logged - len(self._stderr)
        if room < len(data):
            self._stderr_dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self._stderr += data
        *lines, rest = self._stderr.split(b"\n")
        for line in lines:
            self._log_stderr(line)
        self._stderr = bytearray(rest)

    def _log_stderr(self, line: bytes) -> None:
        self._stderr_logged += len(line) + 1
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if self.limits:
            self._stderr_tail.append(text)
        self._log.warn("{script} [{request_id}] stderr: {line}", script=self.script, request_id=self.request_id, line=text)

    def errConnectionLost(self) -> None:
        if self._stderr:
            self._log_stderr(bytes(self._stderr))
            self._stderr = bytearray()
        if self._stderr_dropped:
            self._log.warn(
                "{script} [{request_id}] stderr: {dropped} more bytes not logged",
                script=self.script,
                request_id=self.request_id,
                dropped=self._stderr_dropped,
            )

    # -- end

    def processEnded(self, reason) -> None:
        self.ended = True
        if self._started_at is not None:
            self.run_seconds = self.clock.seconds() - self._started_at
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._forget_kill()
        status = reason.value
        failed = not isinstance(status, error.ProcessDone)
        why = self.stopped_because
        if failed and self.limits:
            # Whatever it was stopped for meanwhile (a script that dies
            # before its headers is stopped for bad output), a limit it hit
            # is what ended it. Known before done fires: the access log reads it then.
            hit = limit_hit(self.limits, status.signal, status.exitCode, self._stderr_tail)
            if hit is not None:
                self.limit_hit, why = hit.name, str(hit)
        self.done.callback(status)
        self._release()
        if not failed:
            return
        if status.signal is not None:
            how = f"was killed by signal {status.signal}"
        else:
            how = f"exited with status {status.exitCode}"
        self._log.warn(
            "{script} [{request_id}] {how}{why}",
            script=self.script,
            request_id=self.request_id,
            how=how,
            why=f" ({why})" if why else "",
        )

    # -- stopping

    def stop(self, why: str) -> None:
        """
        End the script and everything it started (its process group); why
        it was stopped ("timeout", "client gone", "shutdown", "bad output")
        is logged with its exit.
        """
        if self.stopped_because is not None or self.ended:
            return
        self.stopped_because = why
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._log.warn(
            "{script} [{request_id}] stopping: {why}", script=self.script, request_id=self.request_id, why=why
        )
        if not self.failed:
            # Whatever the script writes from now on answers nobody.
            self.failed = True
            if why in _ANSWERS:
                self.sink.script_failed(_ANSWERS[why], why)
        if self.pgid is not None:
            self._kill()

    def _kill(self) -> None:
        # A slow client may have paused the script's output: read (and drop)
        # it again, or its pipes never close and the run never ends.
        self.transport.resumeProducing()
        self._signal(signal.SIGTERM)
        # Even when the script itself exits on SIGTERM, what it started may
        # not: the group gets SIGKILL after the grace period regardless.
        self._kill_call = self.clock.callLater(self.kill_grace, self._signal, signal.SIGKILL)

    def spawn_failed(self, failure) -> None:
        """The script could not be started (no such file, no permission, a bad shebang...)."""
        failure.trap(OSError)
        self.ended = True
        if not self.failed:
            self.fail(502, f"could not be executed: {failure.value.strerror}")
        self.done.callback(None)
        self._release()

    def refuse(self) -> None:
        """The run got no slot and never starts: it is over before it began."""
        self.refused = True
        self._release()

    def _release(self) -> None:
        """
        The run is over: forget the response, so that the request, which
        refers to this run, is freed when it is done with rather than left
        in a cycle for the garbage collector (about 40 objects a request).
        """
        self.sink = None

    def _forget_kill(self) -> None:
        """Cancel a pending SIGKILL once nothing is left in the group, so its id cannot be reused meanwhile."""
        if self._kill_call is None or not self._kill_call.active():
            return
        try:
            self.killpg(self.pgid, 0)
        except ProcessLookupError:
            self._kill_call.cancel()

    def _signal(self, signum: int) -> None:
        try:
            self.killpg(self.pgid, signum)
        except OSError as e:
            if e.errno != errno.ESRCH:  # ESRCH: the whole group is gone already
                raise
