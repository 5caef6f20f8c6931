"""Tests for cgiserve.drain: a shutdown waits for busy connections, closes idle ones, and is bounded."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cgiserve.drain import DRAIN_POLL_SECONDS, Drain

DEADLINE = 10.0


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class FakeConnection:
    """A site connection: idle or busy, leaving the site's set when it closes."""

    def __init__(self, site, busy: bool = False) -> None:
        self.site = site
        self.busy = busy
        self.asked = 0
        self.transport = FakeTransport()
        site.connections.add(self)

    def close_when_idle(self) -> None:
        self.asked += 1
        if not self.busy:
            self.site.connections.discard(self)

    def finish_response(self) -> None:
        self.busy = False


class FakeSite:
    def __init__(self) -> None:
        self.connections: set = set()


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.site = FakeSite()
        self.drain = Drain(self.site, DEADLINE, reactor=self.clock)
        self.drain.startService()

    def test_nothing_open_stops_at_once(self):
        """Without open connections, stopping is immediate."""
        self.successResultOf(self.drain.stopService())

    def test_idle_connections_close_at_once(self):
        """Idle connections are closed as soon as stopping starts, and stopping then completes."""
        connections = [FakeConnection(self.site) for _ in range(3)]
        stopped = self.drain.stopService()
        self.assertEqual([c.asked for c in connections], [1, 1, 1])
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_busy_connection_is_waited_for(self):
        """A connection busy with a response is asked again until it has closed; stopping waits for it."""
        busy = FakeConnection(self.site, busy=True)
        FakeConnection(self.site)
        stopped = self.drain.stopService()
        self.assertNoResult(stopped)
        self.clock.advance(DRAIN_POLL_SECONDS * 5)
        self.assertNoResult(stopped)
        busy.finish_response()
        self.clock.advance(DRAIN_POLL_SECONDS)
        self.successResultOf(stopped)
        self.assertFalse(busy.transport.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadline_cuts_what_is_left(self):
        """Connections still open at the deadline are aborted, and stopping completes then."""
        stuck = FakeConnection(self.site, busy=True)
        stopped = self.drain.stopService()
        self.clock.advance(DEADLINE - DRAIN_POLL_SECONDS)
        self.assertNoResult(stopped)
        self.assertFalse(stuck.transport.aborted)
        self.clock.advance(DRAIN_POLL_SECONDS)
        self.assertTrue(stuck.transport.aborted)
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
