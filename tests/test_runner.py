"""Tests for cgiserve.runner: script slots, the bounded queue and a clean stop, with a fake clock and spawner."""

from __future__ import annotations

import errno

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from cgiserve.runner import Busy, ScriptRunner

EXECUTABLE = "/srv/www/cgi-bin/hello.cgi"
ARGV = [b"/srv/www/cgi-bin/hello.cgi"]
ENV = {"GATEWAY_INTERFACE": "CGI/1.1"}
CWD = "/srv/www/cgi-bin"
QUEUE_TIMEOUT = 10.0
SHUTDOWN_GRACE = 7.0


class FakeScript:
    """What the runner needs of a ScriptProtocol: C{done}, and C{stop} recorded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.done: Deferred = Deferred()
        self.stops: list[str] = []
        self.spawn_failures: list[OSError] = []

    def stop(self, why: str) -> None:
        self.stops.append(why)

    def spawn_failed(self, failure) -> None:
        """Like ScriptProtocol: the run is over when the script cannot be executed."""
        self.spawn_failures.append(failure.value)
        self.done.callback(None)

    def end(self) -> None:
        """The script's process ends."""
        self.done.callback(ProcessDone(0))

    def __repr__(self) -> str:
        return f"<FakeScript {self.name}>"


class FakeSpawner:
    """Stands in for spawn_script: records each call, or raises the OSError set for a script."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.errors: dict[FakeScript, OSError] = {}

    def __call__(self, reactor, protocol, executable, argv, env, cwd, stdin):
        if protocol in self.errors:
            raise self.errors[protocol]
        self.calls.append((reactor, protocol, executable, argv, env, cwd))

    def spawned(self) -> list[FakeScript]:
        return [call[1] for call in self.calls]


class ScriptRunnerTestCase(SynchronousTestCase):
    """Shared set-up: a runner on a MemoryReactorClock with a recording spawner."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.spawner = FakeSpawner()
        self.scripts = [FakeScript(f"s{i}") for i in range(8)]

    def make_runner(self, max_scripts=2, max_queue=2, queue_timeout=QUEUE_TIMEOUT, shutdown_grace=SHUTDOWN_GRACE):
        self.runner = ScriptRunner(
            max_scripts, max_queue, queue_timeout, shutdown_grace, reactor=self.clock, spawner=self.spawner
        )
        self.runner.startService()
        return self.runner

    def start(self, script: FakeScript) -> Deferred:
        return self.runner.start(script, EXECUTABLE, ARGV, ENV, CWD)


class StartTests(ScriptRunnerTestCase):
    """Starting scripts within the slots."""

    def test_starts_at_once_when_a_slot_is_free(self):
        """With a free slot the script is spawned at once, with the reactor and the request's arguments."""
        self.make_runner()
        [s0] = self.scripts[:1]
        self.assertIs(self.successResultOf(self.start(s0)), s0)
        self.assertEqual(self.spawner.calls, [(self.clock, s0, EXECUTABLE, ARGV, ENV, CWD)])

    def test_at_most_max_scripts_at_once(self):
        """No more than max_scripts are spawned at once; the next one waits."""
        self.make_runner(max_scripts=2)
        s0, s1, s2 = self.scripts[:3]
        self.successResultOf(self.start(s0))
        self.successResultOf(self.start(s1))
        waiting = self.start(s2)
        self.assertNoResult(waiting)
        self.assertEqual(self.spawner.spawned(), [s0, s1])

    def test_waiting_script_starts_when_one_ends(self):
        """A waiting script is spawned as soon as a running script's done fires."""
        self.make_runner(max_scripts=2)
        s0, s1, s2 = self.scripts[:3]
        self.start(s0)
        self.start(s1)
        waiting = self.start(s2)
        s1.end()
        self.assertIs(self.successResultOf(waiting), s2)
        self.assertEqual(self.spawner.spawned(), [s0, s1, s2])

    def test_queue_is_first_come_first_served(self):
        """Waiting scripts get slots in the order they asked."""
        self.make_runner(max_scripts=1, max_queue=3)
        s0, s1, s2, s3 = self.scripts[:4]
        self.start(s0)
        started = [self.start(s) for s in (s1, s2, s3)]
        s0.end()
        self.assertEqual(self.spawner.spawned(), [s0, s1])
        s1.end()
        self.assertEqual(self.spawner.spawned(), [s0, s1, s2])
        self.assertIs(self.successResultOf(started[1]), s2)
        self.assertNoResult(started[2])

    def test_done_result_passes_through(self):
        """The runner's bookkeeping leaves the exit status on done for whoever else waits on it."""
        self.make_runner()
        s0 = self.scripts[0]
        self.start(s0)
        status = ProcessDone(0)
        s0.done.callback(status)
        self.assertIs(self.successResultOf(s0.done), status)
        self.assertEqual(self.runner.active, set())

    def test_slot_freed_by_ended_script_is_reused(self):
        """A script that ended gives its slot back: a later request starts at once."""
        self.make_runner(max_scripts=1, max_queue=0)
        s0, s1 = self.scripts[:2]
        self.start(s0)
        s0.end()
        self.assertIs(self.successResultOf(self.start(s1)), s1)


class QueueTests(ScriptRunnerTestCase):
    """The bounded queue of requests waiting for a slot."""

    def test_queue_overflow_is_busy_at_once(self):
        """With every slot busy and the queue full, a request fails with Busy at once and nothing is spawned."""
        self.make_runner(max_scripts=1, max_queue=1)
        s0, s1, s2 = self.scripts[:3]
        self.start(s0)
        queued = self.start(s1)
        failure = self.failureResultOf(self.start(s2), Busy)
        self.assertEqual(str(failure.value), "all 1 script slots busy and 1 requests queued")
        self.assertNoResult(queued)
        self.assertEqual(self.spawner.spawned(), [s0])

    def test_no_queue_means_busy_when_full(self):
        """With max_queue 0, a request that finds every slot busy fails with Busy."""
        self.make_runner(max_scripts=1, max_queue=0)
        s0, s1 = self.scripts[:2]
        self.start(s0)
        self.failureResultOf(self.start(s1), Busy)

    def test_queue_timeout_is_busy(self):
        """A request still waiting after queue_timeout seconds fails with Busy, not before."""
        self.make_runner(max_scripts=1)
        s0, s1 = self.scripts[:2]
        self.start(s0)
        queued = self.start(s1)
        self.clock.advance(QUEUE_TIMEOUT - 0.1)
        self.assertNoResult(queued)
        self.clock.advance(0.1)
        failure = self.failureResultOf(queued, Busy)
        self.assertEqual(str(failure.value), f"no script slot free within {QUEUE_TIMEOUT} s")

    def test_timed_out_request_leaves_the_queue(self):
        """A request that timed out is never spawned; the slot it waited for goes to the next request."""
        self.make_runner(max_scripts=1)
        s0, s1, s2 = self.scripts[:3]
        self.start(s0)
        timed_out = self.start(s1)
        self.clock.advance(QUEUE_TIMEOUT / 2)
        later = self.start(s2)
        self.clock.advance(QUEUE_TIMEOUT / 2)
        self.failureResultOf(timed_out, Busy)
        s0.end()
        self.assertIs(self.successResultOf(later), s2)
        self.assertEqual(self.spawner.spawned(), [s0, s2])

    def test_timeout_cancelled_once_started(self):
        """A queued request that got its slot in time is not failed when its queue timeout passes."""
        self.make_runner(max_scripts=1)
        s0, s1 = self.scripts[:2]
        self.start(s0)
        queued = self.start(s1)
        s0.end()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(QUEUE_TIMEOUT)
        self.assertIs(self.successResultOf(queued), s1)

    def test_no_queue_timeout_when_zero(self):
        """A queue_timeout of 0 lets a request wait for as long as it takes."""
        self.make_runner(max_scripts=1, queue_timeout=0)
        s0, s1 = self.scripts[:2]
        self.start(s0)
        queued = self.start(s1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000 * QUEUE_TIMEOUT)
        self.assertNoResult(queued)

    def test_cancel_leaves_the_queue(self):
        """Cancelling a queued start fails it with Busy, and the next slot goes to the request behind it."""
        self.make_runner(max_scripts=1, max_queue=2)
        s0, s1, s2 = self.scripts[:3]
        self.start(s0)
        cancelled = self.start(s1)
        behind = self.start(s2)
        cancelled.cancel()
        self.failureResultOf(cancelled, Busy)
        s0.end()
        self.assertIs(self.successResultOf(behind), s2)
        self.assertEqual(self.spawner.spawned(), [s0, s2])

    def test_cancel_frees_a_queue_place(self):
        """A cancelled request no longer counts against max_queue."""
        self.make_runner(max_scripts=1, max_queue=1)
        s0, s1, s2 = self.scripts[:3]
        self.start(s0)
        cancelled = self.start(s1)
        cancelled.cancel()
        self.failureResultOf(cancelled, Busy)
        self.assertNoResult(self.start(s2))

    def test_cancel_after_start_does_nothing(self):
        """Cancelling a start that has already spawned its script leaves the script running."""
        self.make_runner()
        s0 = self.scripts[0]
        started = self.start(s0)
        started.cancel()
        self.assertIs(self.successResultOf(started), s0)
        self.assertEqual(self.runner.active, {s0})


class SpawnFailureTests(ScriptRunnerTestCase):
    """A script that cannot be executed."""

    def test_spawn_error_goes_to_the_protocol(self):
        """An OSError from the spawner goes to the protocol's spawn_failed, which ends the run."""
        self.make_runner()
        s0 = self.scripts[0]
        self.spawner.errors[s0] = OSError(errno.ENOEXEC, "Exec format error")
        self.assertIs(self.successResultOf(self.start(s0)), s0)
        self.assertEqual([e.errno for e in s0.spawn_failures], [errno.ENOEXEC])
        self.assertEqual(self.runner.active, set())

    def test_spawn_error_releases_the_slot(self):
        """A script that could not be spawned gives its slot back at once."""
        self.make_runner(max_scripts=1, max_queue=0)
        s0, s1 = self.scripts[:2]
        self.spawner.errors[s0] = OSError(errno.EACCES, "Permission denied")
        self.start(s0)
        self.assertIs(self.successResultOf(self.start(s1)), s1)
        self.assertEqual(self.spawner.spawned(), [s1])

    def test_spawn_error_of_queued_request_passes_the_slot_on(self):
        """When a queued script fails to spawn, the slot goes on to the request behind it."""
        self.make_runner(max_scripts=1, max_queue=2)
        s0, s1, s2 = self.scripts[:3]
        self.spawner.errors[s1] = OSError(errno.ENOENT, "No such file or directory")
        self.start(s0)
        failing = self.start(s1)
        behind = self.start(s2)
        s0.end()
        self.successResultOf(failing)
        self.assertEqual([e.errno for e in s1.spawn_failures], [errno.ENOENT])
        self.assertIs(self.successResultOf(behind), s2)

    def test_later_spawn_failure_goes_to_the_protocol(self):
        """A spawner that answers later (warm Python's hand-over) reports its failure to spawn_failed too."""
        self.make_runner()
        s0 = self.scripts[0]
        handed_over = Deferred()
        self.runner.spawner = lambda *args: handed_over
        self.assertIs(self.successResultOf(self.start(s0)), s0)
        self.assertEqual(s0.spawn_failures, [])
        handed_over.errback(OSError(errno.EAGAIN, "Resource temporarily unavailable"))
        self.assertEqual([e.errno for e in s0.spawn_failures], [errno.EAGAIN])
        self.assertEqual(self.runner.active, set())


class StopServiceTests(ScriptRunnerTestCase):
    """Stopping the runner: a grace period for the scripts of the requests still being answered, Busy after it."""

    def test_stop_with_nothing_running_fires_at_once(self):
        """With no script running, stopService fires at once."""
        self.make_runner()
        self.assertIsNone(self.successResultOf(self.runner.stopService()))
        self.assertFalse(self.runner.running)

    def test_stop_waits_for_running_scripts(self):
        """stopService waits for running scripts, and fires when the last one ends within the grace period."""
        self.make_runner()
        s0, s1 = self.scripts[:2]
        self.start(s0)
        self.start(s1)
        stopped = self.runner.stopService()
        self.assertNoResult(stopped)
        s0.end()
        self.assertNoResult(stopped)
        s1.end()
        self.successResultOf(stopped)
        self.clock.advance(SHUTDOWN_GRACE)
        self.assertEqual((s0.stops, s1.stops), ([], []))

    def test_stop_stops_scripts_after_grace(self):
        """After shutdown_grace seconds each running script gets stop('shutdown'); stopService fires when they end."""
        self.make_runner()
        s0, s1 = self.scripts[:2]
        self.start(s0)
        self.start(s1)
        stopped = self.runner.stopService()
        self.clock.advance(SHUTDOWN_GRACE - 0.1)
        self.assertEqual((s0.stops, s1.stops), ([], []))
        self.clock.advance(0.1)
        self.assertEqual((s0.stops, s1.stops), (["shutdown"], ["shutdown"]))
        self.assertNoResult(stopped)
        s0.end()
        s1.end()
        self.successResultOf(stopped)

    def test_script_ended_in_grace_not_stopped(self):
        """A script that ended during the grace period is not stopped when the period runs out."""
        self.make_runner()
        s0, s1 = self.scripts[:2]
        self.start(s0)
        self.start(s1)
        self.runner.stopService()
        s0.end()
        self.clock.advance(SHUTDOWN_GRACE)
        self.assertEqual((s0.stops, s1.stops), ([], ["shutdown"]))

    def test_queued_requests_run_in_the_grace(self):
        """Requests waiting for a slot when the runner stops still run as slots free; stopService fires after the last."""
        self.make_runner(max_scripts=1, max_queue=2)
        s0, s1, s2 = self.scripts[:3]
        self.start(s0)
        queued = [self.start(s1), self.start(s2)]
        stopped = self.runner.stopService()
        s0.end()
        s1.end()
        self.assertNoResult(stopped)
        s2.end()
        self.successResultOf(stopped)
        for waiting in queued:
            self.successResultOf(waiting)
        self.assertEqual(self.spawner.spawned(), [s0, s1, s2])

    def test_queued_requests_busy_after_the_grace(self):
        """Requests still waiting for a slot when the grace ends fail with Busy and are never spawned."""
        self.make_runner(max_scripts=1, max_queue=2)
        s0, s1 = self.scripts[:2]
        self.start(s0)
        queued = self.start(s1)
        stopped = self.runner.stopService()
        self.clock.advance(SHUTDOWN_GRACE)
        self.failureResultOf(queued, Busy)
        self.assertEqual(s0.stops, ["shutdown"])
        s0.end()
        self.successResultOf(stopped)
        self.assertEqual(self.spawner.spawned(), [s0])

    def test_start_in_the_grace_runs(self):
        """A request that the drain still answers after stopService gets its script, stopped when the grace ends."""
        self.make_runner()
        self.successResultOf(self.runner.stopService())
        self.clock.advance(SHUTDOWN_GRACE / 2)
        self.start(self.scripts[0])
        self.assertEqual(self.spawner.spawned(), [self.scripts[0]])
        self.clock.advance(SHUTDOWN_GRACE / 2)
        self.assertEqual(self.scripts[0].stops, ["shutdown"])

    def test_start_after_the_grace_is_busy(self):
        """A request after the grace period fails with Busy and spawns nothing."""
        self.make_runner()
        self.runner.stopService()
        self.clock.advance(SHUTDOWN_GRACE)
        failure = self.failureResultOf(self.start(self.scripts[0]), Busy)
        self.assertEqual(str(failure.value), "the server is shutting down")
        self.assertEqual(self.spawner.calls, [])
