# -*- test-case-name: tests.test_runner -*-
"""Which scripts run when: a bounded number at once, a bounded queue, and a clean stop."""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from cgiserve.spawn import spawn_script


class Busy(Exception):
    """No slot for a script now or within the queue timeout; the message says which."""


class ScriptRunner(service.Service):
    """
    Starts scripts for requests, at most C{max_scripts} at a time.

    Requests beyond that wait in a queue of at most C{max_queue} for at
    most C{queue_timeout} seconds, then fail with L{Busy}. On stop (twistd's
    SIGTERM, or the end of a reload's old worker) scripts running, queued
    or asked for by the requests that the drain still answers get
    C{shutdown_grace} seconds to finish; then the running ones' process
    groups are stopped and the rest fail with L{Busy}.
    """

    _log = Logger()

    def __init__(
        self,
        max_scripts: int,
        max_queue: int,
        queue_timeout: float,
        shutdown_grace: float,
        reactor=None,
        spawner=spawn_script,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.spawner = spawner
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.shutdown_grace = shutdown_grace
        self.slots = defer.DeferredSemaphore(max_scripts)
        self.active: set = set()
        self.stopping = False
        self._grace_over = False
        self._idle: defer.Deferred | None = None

    def start(
        self, protocol, executable: str, argv: list[bytes], env: dict[str, str], cwd: str, stdin: bool = True
    ) -> defer.Deferred:
        """
        Start a script once a slot is free: a Deferred that fires with the
        protocol when it is being started, or fails with L{Busy}. Cancel it to give up a
        place in the queue. From then on the protocol owns the run: it
        hears whether the script could be executed (C{spawn_failed}) and
        its C{done} frees the slot.
        """
        if self._grace_over:
            return defer.fail(Busy("the server is shutting down"))
        if self.slots.tokens:
            # A free slot: taken at once, without the queue's Deferreds.
            self.slots.tokens -= 1
            return defer.succeed(self._spawn(protocol, executable, argv, env, cwd, stdin))
        if len(self.slots.waiting) >= self.max_queue:
            return defer.fail(Busy(f"all {self.slots.limit} script slots busy and {self.max_queue} requests queued"))
        waiting = self.slots.acquire()
        if self.queue_timeout:
            waiting.addTimeout(self.queue_timeout, self.reactor)

        def not_started(failure):
            if failure.check(defer.TimeoutError):
                raise Busy(f"no script slot free within {self.queue_timeout} s")
            failure.trap(defer.CancelledError)
            raise Busy("left the queue (client gone or server stopping)")

        return waiting.addCallbacks(lambda _: self._spawn(protocol, executable, argv, env, cwd, stdin), not_started)

    def _spawn(self, protocol, executable, argv, env, cwd, stdin):
        """Spawn a script in the slot it holds, which its C{done} frees; failing to start is the protocol's to hear."""
        self.active.add(protocol)
        protocol.done.addBoth(self._ended, protocol)
        try:
            spawning = self.spawner(self.reactor, protocol, executable, argv, env, cwd, stdin)
        except BaseException:
            spawning = defer.fail()
        if isinstance(spawning, defer.Deferred):
            spawning.addErrback(protocol.spawn_failed)
        return protocol

    def _ended(self, result, protocol):
        self.active.discard(protocol)
        self.slots.release()
        if self.stopping:
            self._fire_if_idle()
        return result

    def stopService(self):
        """Fires once no script runs or waits; the grace period runs on for the requests still being answered."""
        super().stopService()
        self.stopping = True
        if self.active:
            self._log.info(
                "Waiting up to {grace} s for {count} running scripts", grace=self.shutdown_grace, count=len(self.active)
            )
        self.reactor.callLater(self.shutdown_grace, self._grace_ended)
        self._idle = defer.Deferred()
        self._fire_if_idle()
        return self._idle

    def _fire_if_idle(self) -> None:
        if not self.active and not self.slots.waiting and not self._idle.called:
            self._idle.callback(None)

    def _grace_ended(self) -> None:
        self._grace_over = True
        for waiter in list(self.slots.waiting):
            waiter.cancel()
        for protocol in list(self.active):
            protocol.stop("shutdown")
