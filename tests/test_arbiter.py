"""Tests for cgiserve.arbiter: the master's supervision of its workers, on a fake reactor whose processes the tests end."""

from __future__ import annotations

import itertools

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, eventAsJSON, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from cgiserve import relay
from cgiserve.arbiter import (
    READY_SECONDS,
    STABLE_SECONDS,
    Arbiter,
    restart_delay,
    share,
    worker_command,
)

STOP_SECONDS = 20.0


@pytest.mark.parametrize(("total", "workers"), [(16, 2), (5, 2), (2, 2), (7, 3), (100, 7)])
def test_shares_add_up_and_differ_by_one_at_most(total, workers):
    """The workers' parts of a limit add up to it, and none has more than one more than another."""
    parts = [share(total, workers, index) for index in range(workers)]
    assert sum(parts) == total
    assert max(parts) - min(parts) <= 1 and min(parts) >= 1


def test_restart_delay_doubles_up_to_its_bound():
    """No wait after a worker that served a while; then 0.5 s, doubling, never over 30 s."""
    assert [restart_delay(failures) for failures in range(8)] == [0, 0.5, 1, 2, 4, 8, 16, 30]
    assert restart_delay(100) == 30


def test_worker_command_is_the_masters_options_with_its_shares():
    """A worker runs cgiserve.worker with the master's own options, one worker, and its place's share of the limits."""
    command = worker_command("/py", ["--root", "/srv", "--workers", "3"], 3, 8, 128, number=7, slot=2)
    assert command == [
        "/py", "-m", "cgiserve.worker", "7", "--root", "/srv", "--workers", "3",
        "--workers", "1", "--max-scripts", "2", "--max-queue", "42",
    ]  # fmt: skip


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.written: list[tuple[int, bytes]] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written.append((fd, data))


class FakeReactor(Clock):
    """A clock that spawns fake processes, each remembered with its protocol and arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple] = []
        self.failing = False
        self._pids = itertools.count(100)

    def spawnProcess(self, protocol, executable, args, env, childFDs):
        if self.failing:
            raise OSError(2, "No such file or directory")
        process = FakeProcess(next(self._pids))
        protocol.makeConnection(process)
        self.spawned.append((protocol, args, childFDs))
        return process

    def callFromThread(self, f, *args):
        f(*args)


class FakeSocket:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def record(**event) -> bytes:
    """A log event as a worker's pipe carries it."""
    event.setdefault("log_level", LogLevel.info)
    event.setdefault("log_namespace", "cgiserve.worker")
    return b"\x1e" + eventAsJSON(event).encode() + b"\n"


class ArbiterTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.published: list[dict] = []
        self.arbiter = Arbiter(
            2,
            [FakeSocket(7), FakeSocket(8)],
            lambda number, slot: ["python", "-m", "cgiserve.worker", str(number), f"slot={slot}"],
            STOP_SECONDS,
            reactor=self.reactor,
            publish=self.published.append,
            environ={"PATH": "/bin"},
        )
        self.written: list[bytes] = []
        self.arbiter.write_stdout = self.written.append
        with capturedLogs() as self.events:
            self.arbiter.startService()
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        if self.arbiter.running:
            self.arbiter.stopService()
            for worker in list(self.arbiter.workers):
                self.end(worker)

    def workers(self, generation: int = 0) -> list:
        return sorted(
            (worker for worker in self.arbiter.workers if worker.generation == generation), key=lambda w: w.number
        )

    def ready(self, *workers) -> None:
        for worker in workers:
            worker.childDataReceived(relay.EVENTS_FD, record(log_format="Worker ready", **{relay.READY: True}))

    def end(self, worker, code: int = 0, signal=None) -> None:
        reason = ProcessDone(0) if code == 0 and signal is None else ProcessTerminated(code, signal)
        worker.processEnded(Failure(reason))

    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def signals(self) -> list[list[str]]:
        return [worker.transport.signals for worker, _, _ in self.reactor.spawned]


class StartTests(ArbiterTestCase):
    def test_spawns_one_worker_per_place_with_the_sockets(self):
        """Each worker gets the master's pipe on 0, pipes on 1-4 and the sockets from 5 on, in --listen order."""
        self.assertEqual(len(self.reactor.spawned), 2)
        for (worker, args, child_fds), slot in zip(self.reactor.spawned, (0, 1)):
            self.assertEqual(child_fds, {0: "w", 1: "r", 2: "r", 3: "r", 4: "r", 5: 7, 6: 8})
            self.assertEqual(args[-1], f"slot={slot}")
            self.assertEqual(worker.slot, slot)
        self.assertEqual(self.lines(), ["Worker 1 (pid 100) starting", "Worker 2 (pid 101) starting"])

    def test_ready_is_told_not_relayed(self):
        """A worker's ready record makes one line of the master's; the record itself is not published."""
        with capturedLogs() as events:
            self.ready(*self.workers())
        self.assertEqual([formatEvent(e) for e in events], ["Worker 1 (pid 100) serving", "Worker 2 (pid 101) serving"])
        self.assertEqual(self.published, [])

    def test_pipes_relayed(self):
        """Log records are published tagged with their worker; stdout goes on by whole lines; stderr is logged by line."""
        [first, _] = self.workers()
        first.childDataReceived(relay.EVENTS_FD, record(log_format="hello {who}", who="you"))
        [event] = self.published
        self.assertEqual((formatEvent(event), event["log_system"]), ("hello you", "cgiserve.worker#info worker 1"))
        first.childDataReceived(relay.STDOUT_FD, b"one\ntw")
        first.childDataReceived(relay.STDOUT_FD, b"o\n")
        self.assertEqual(self.written, [b"one\n", b"two\n"])
        with capturedLogs() as events:
            first.childDataReceived(relay.STDERR_FD, b"Traceback: oops\n")
        self.assertEqual([formatEvent(e) for e in events], ["Worker 1 (pid 100) stderr: Traceback: oops"])

    def test_not_ready_in_time_is_killed_and_replaced(self):
        """A worker that does not serve within READY_SECONDS is killed; its place gets a new one after a backoff."""
        [first, second] = self.workers()
        self.ready(second)
        self.reactor.advance(READY_SECONDS)
        self.assertEqual(self.signals(), [["KILL"], []])
        self.end(first, signal=9)
        self.reactor.advance(restart_delay(1))
        self.assertEqual([w.slot for w in self.workers()], [1, 0])


class ReplaceTests(ArbiterTestCase):
    def test_worker_that_served_long_is_replaced_at_once(self):
        """A worker that served STABLE_SECONDS and died is replaced at once, in its place, with one log line."""
        [first, second] = self.workers()
        self.ready(first, second)
        self.reactor.advance(STABLE_SECONDS)
        with capturedLogs() as events:
            self.end(first, code=1)
            self.reactor.advance(0)
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "Worker 1 (pid 100) exited with status 1; a new worker starts in its place at once",
                "Worker 3 (pid 102) starting",
            ],
        )
        self.assertEqual([(w.number, w.slot) for w in self.workers()], [(2, 1), (3, 0)])
        self.assertEqual(self.arbiter.restarts, 1)

    def test_crash_loop_backs_off(self):
        """Workers that end before they serve are replaced after 0.5 s, then 1 s, then 2 s."""
        for delay in (0.5, 1, 2):
            [worker] = [w for w in self.workers() if w.slot == 0]
            self.end(worker, code=2)
            self.reactor.advance(delay - 0.01)
            self.assertNotIn(0, [w.slot for w in self.workers() if w.number != worker.number])
            self.reactor.advance(0.01)
            self.assertIn(0, [w.slot for w in self.workers()])

    def test_spawn_failure_is_a_failed_start(self):
        """A worker whose process cannot be made counts as one that ended at once, and is retried after a backoff."""
        [first, _] = self.workers()
        self.end(first, signal=9)
        self.reactor.failing = True
        with capturedLogs() as events:
            self.reactor.advance(restart_delay(1))
            self.reactor.advance(0)
        self.assertIn("could not start: No such file or directory; a new worker starts in its place in 1 s", formatEvent(events[-1]))
        self.reactor.failing = False
        self.reactor.advance(1)
        self.assertEqual(sorted(w.slot for w in self.workers()), [0, 1])


class ReloadTests(ArbiterTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.old = self.workers()
        self.ready(*self.old)

    def test_old_workers_drain_once_every_new_one_serves(self):
        """SIGHUP starts a new generation; only when all of it serves are the old workers asked to stop."""
        self.arbiter.reload()
        new = self.workers(1)
        self.assertEqual(len(new), 2)
        self.ready(new[0])
        self.assertEqual(self.signals(), [[], [], [], []])
        with capturedLogs() as events:
            self.ready(new[1])
        self.assertEqual(self.signals(), [["TERM"], ["TERM"], [], []])
        self.assertEqual(formatEvent(events[-1]), "Reloaded: workers 3, 4 serve, workers 1, 2 drain")
        with capturedLogs() as events:
            for worker in self.old:
                self.end(worker)
            self.reactor.advance(STABLE_SECONDS)
        self.assertEqual([formatEvent(e) for e in events], ["Worker 1 (pid 100) exited with status 0", "Worker 2 (pid 101) exited with status 0"])
        self.assertEqual(self.workers(1), new)

    def test_failed_reload_keeps_the_old_workers(self):
        """A new worker that ends before it serves fails the reload: the rest of its generation stops, the old one goes on."""
        self.arbiter.reload()
        new = self.workers(1)
        with capturedLogs() as events:
            self.end(new[0], code=1)
        self.assertEqual(
            formatEvent(events[-1]),
            "Reload failed: Worker 3 (pid 102) exited with status 1 before it served; workers 1, 2 go on serving",
        )
        self.assertEqual(self.signals(), [[], [], [], ["TERM"]])
        self.end(new[1], signal=15)
        self.reactor.advance(STABLE_SECONDS)
        self.assertEqual(self.workers(), self.old)
        self.arbiter.reload()
        self.ready(*self.workers(1))
        self.assertEqual(self.signals()[:2], [["TERM"], ["TERM"]])

    def test_second_sighup_during_a_reload_does_nothing(self):
        """A SIGHUP while a reload is under way says so and starts no more workers."""
        self.arbiter.reload()
        with capturedLogs() as events:
            self.arbiter.reload()
        self.assertEqual([formatEvent(e) for e in events], ["SIGHUP: a reload is under way already"])
        self.assertEqual(len(self.reactor.spawned), 4)


class StopTests(ArbiterTestCase):
    def test_stop_drains_every_worker_and_waits_for_them(self):
        """stopService sends SIGTERM to every worker and fires once the last has ended, none replaced."""
        workers = self.workers()
        self.ready(*workers)
        stopped = self.arbiter.stopService()
        self.assertEqual(self.signals(), [["TERM"], ["TERM"]])
        self.end(workers[0])
        self.assertNoResult(stopped)
        with capturedLogs() as events:
            self.end(workers[1])
        self.successResultOf(stopped)
        self.assertEqual(formatEvent(events[-1]), "All workers stopped")
        self.reactor.advance(STOP_SECONDS)
        self.assertEqual(len(self.reactor.spawned), 2)

    def test_stop_kills_a_worker_past_the_bound(self):
        """A worker still there STOP_SECONDS after SIGTERM is killed; the stop completes when it ends."""
        workers = self.workers()
        stopped = self.arbiter.stopService()
        self.end(workers[0])
        self.reactor.advance(STOP_SECONDS)
        self.assertEqual(self.signals(), [["TERM"], ["TERM", "KILL"]])
        self.end(workers[1], signal=9)
        self.successResultOf(stopped)


class SnapshotTests(ArbiterTestCase):
    def test_asked_on_the_masters_pipe_answered_on_the_snapshot_pipe(self):
        """A snapshot is asked for with a newline on fd 0; the worker's lines answer the asks in their order."""
        [worker, _] = self.workers()
        first, second = worker.snapshot(2.0), worker.snapshot(2.0)
        self.assertEqual(worker.transport.written, [(relay.MASTER_FD, b"\n")] * 2)
        worker.childDataReceived(relay.SNAPSHOT_FD, b'{"n": 1}\n{"n"')
        self.assertEqual(self.successResultOf(first), {"n": 1})
        self.assertNoResult(second)
        worker.childDataReceived(relay.SNAPSHOT_FD, b": 2}\n")
        self.assertEqual(self.successResultOf(second), {"n": 2})
        # Answered in time: no timeout is left to come.
        self.assertEqual([call for call in self.reactor.getDelayedCalls() if call.func == worker._unanswered], [])

    def test_late_answer_is_dropped(self):
        """An ask not answered in time gets None; its late answer is not taken for the next one's."""
        [worker, _] = self.workers()
        late = worker.snapshot(2.0)
        self.reactor.advance(2.0)
        self.assertIsNone(self.successResultOf(late))
        following = worker.snapshot(2.0)
        worker.childDataReceived(relay.SNAPSHOT_FD, b'{"n": 1}\n')
        self.assertNoResult(following)
        worker.childDataReceived(relay.SNAPSHOT_FD, b'{"n": 2}\n')
        self.assertEqual(self.successResultOf(following), {"n": 2})

    def test_worker_that_ends_answers_none(self):
        """The asks a worker had not answered when it ended get None."""
        [worker, _] = self.workers()
        asked = worker.snapshot(2.0)
        self.end(worker, code=1)
        self.assertIsNone(self.successResultOf(asked))
