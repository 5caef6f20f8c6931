# -*- test-case-name: tests.test_drain,tests.test_e2e_limits,tests.test_e2e_listen -*-
"""Shutdown of the HTTP side as a drain: responses under way are delivered, then every connection closes."""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

# How often a draining server looks for connections that have gone idle.
DRAIN_POLL_SECONDS = 0.1

# After the scripts' shutdown grace and kill grace, how long the last
# responses may take to reach the kernel before their connections are cut.
DELIVERY_SECONDS = 3.0


def drain_seconds(shutdown_grace: float, kill_grace: float) -> float:
    """How long a drain may take: the scripts' grace and kill grace, then the last deliveries."""
    return shutdown_grace + kill_grace + DELIVERY_SECONDS


class Drain(service.Service):
    """
    On stop (twistd's SIGTERM), closes each of the site's connections as
    soon as it has no request in progress: idle keep-alive connections at
    once, busy ones right after their response has been written out. The
    listening ports stop at the same time (they are services of their
    own), and the script runner gives running scripts their grace, so the
    responses of scripts that finish in time reach their clients.

    Stopping completes when the last connection has closed, or after
    C{deadline} seconds, when the ones still open are cut.
    """

    _log = Logger()

    def __init__(self, site, deadline: float, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.site = site
        self.deadline = deadline
        self.reactor = reactor
        self._drained: defer.Deferred | None = None
        self._poll: task.LoopingCall | None = None
        self._cut_call = None

    def stopService(self):
        super().stopService()
        connections = self.site.connections
        if not connections:
            return defer.succeed(None)
        self._log.info("Draining {count} connections", count=len(connections))
        self._drained = defer.Deferred()
        self._poll = task.LoopingCall(self._close_idle)
        self._poll.clock = self.reactor
        self._cut_call = self.reactor.callLater(self.deadline, self._cut)
        self._poll.start(DRAIN_POLL_SECONDS, now=True)
        return self._drained

    def _close_idle(self) -> None:
        connections = self.site.connections
        for connection in list(connections):
            connection.close_when_idle()
        if not connections:
            self._done()

    def _cut(self) -> None:
        connections = list(self.site.connections)
        self._log.warn(
            "Cutting {count} connections still open {seconds} s into shutdown",
            count=len(connections),
            seconds=self.deadline,
        )
        for connection in connections:
            connection.transport.abortConnection()
        self._done()

    def _done(self) -> None:
        if self._poll.running:
            self._poll.stop()
        if self._cut_call.active():
            self._cut_call.cancel()
        if not self._drained.called:
            self._drained.callback(None)
