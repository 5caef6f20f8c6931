# -*- test-case-name: tests.test_arbiter,tests.test_e2e_workers -*-
"""
The master of C{--workers}: it opens the sockets, starts the worker
processes that serve them, replaces a worker that dies, reloads them all
on SIGHUP without refusing a connection, and on SIGTERM stops them with
their drain. As in gunicorn's arbiter, every change of state is one log
line. The master never serves a request and never runs a script.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import os
import signal
import sys

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger, globalLogPublisher

from cgiserve import relay
from cgiserve.drain import drain_seconds
from cgiserve.listen import server_endpoint
from cgiserve.sockets import SharedSocket

# A new worker that does not serve within this long is killed: a reload
# that waits on it fails, a replacement is replaced in turn.
READY_SECONDS = 30.0

# Beyond the workers' own drain bound, how long a stopping master waits
# before it kills a worker that is still there.
STOP_MARGIN_SECONDS = 5.0

# A worker that served this long ended for a reason of its own, not its
# start-up: the next in its place starts at once, not after a backoff.
STABLE_SECONDS = 10.0
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


def share(total: int, workers: int, index: int) -> int:
    """Worker C{index}'s part of a limit of C{total} shared by C{workers}: the parts differ by one at most."""
    return total // workers + (index < total % workers)


def restart_delay(failures: int) -> float:
    """How long to wait before starting a worker in a place whose last C{failures} workers ended soon after they started."""
    if not failures:
        return 0.0
    return min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (failures - 1))


def worker_command(executable: str, argv, workers: int, max_scripts: int, max_queue: int, number: int, slot: int):
    """The command line of worker C{number} in place C{slot}: the master's own options, with its parts of the limits."""
    return [
        executable,
        "-m",
        "cgiserve.worker",
        str(number),
        *argv,
        "--workers",
        "1",
        "--max-scripts",
        str(share(max_scripts, workers, slot)),
        "--max-queue",
        str(share(max_queue, workers, slot)),
    ]


def how_ended(status) -> str:
    """A process's end as a log line tells it."""
    if status.signal is not None:
        return f"killed by {signal.Signals(status.signal).name}"
    return f"exited with status {status.exitCode}"


def _names(workers) -> str:
    return ", ".join(str(worker.number) for worker in sorted(workers, key=lambda worker: worker.number)) or "none"


class Worker(protocol.ProcessProtocol):
    """One worker process as the master sees it: its pipes relayed, its start and its end told to the arbiter."""

    _log = Logger()

    def __init__(self, arbiter: "Arbiter", number: int, slot: int, generation: int) -> None:
        self.arbiter = arbiter
        self.number = number
        self.slot = slot
        self.generation = generation
        self.pid = None
        self.started = arbiter.reactor.seconds()
        self.ready_at = None
        self.stopping = False
        self.ended = defer.Deferred()
        self.ready_call = None
        self._pipes = {fd: relay.Lines() for fd in (relay.STDOUT_FD, relay.STDERR_FD, relay.EVENTS_FD)}
        self._pipes[relay.SNAPSHOT_FD] = relay.Lines(relay.MAX_SNAPSHOT_LINE)
        # The snapshots asked for and not yet answered, oldest first.
        self._asked: collections.deque[defer.Deferred] = collections.deque()

    def __str__(self) -> str:
        return f"worker {self.number} (pid {self.pid})"

    @property
    def serving(self) -> bool:
        return self.ready_at is not None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, fd: int, data: bytes) -> None:
        for line in self._pipes[fd].feed(data):
            self._line(fd, line)

    def childConnectionLost(self, fd: int) -> None:
        if fd in self._pipes:
            rest = self._pipes[fd].rest()
            if rest:
                self._line(fd, rest)

    def snapshot(self, timeout: float) -> defer.Deferred:
        """
        Ask the worker for a snapshot of its figures (--metrics): a
        Deferred that fires with it, or with None if the worker does not
        answer within C{timeout} seconds.
        """
        answer = defer.Deferred()
        self._asked.append(answer)
        late = self.arbiter.reactor.callLater(timeout, self._unanswered, answer)
        answer.addBoth(_cancelling, late)
        try:
            self.transport.writeToChild(relay.MASTER_FD, b"\n")
        except KeyError:  # that pipe has closed: the worker is ending
            self._unanswered(answer)
        return answer

    @staticmethod
    def _unanswered(answer: defer.Deferred) -> None:
        # Left in the queue: the answer may still come, and is then dropped.
        if not answer.called:
            answer.callback(None)

    def _answered(self, line: bytes) -> None:
        if not self._asked:
            self._log.error("Worker {worker.number} (pid {worker.pid}) sent a snapshot nobody asked for", worker=self)
            return
        answer = self._asked.popleft()
        if answer.called:
            return
        try:
            snapshot = json.loads(line)
        except ValueError:
            self._log.error("Worker {worker.number} (pid {worker.pid}) sent a snapshot that is not JSON", worker=self)
            snapshot = None
        answer.callback(snapshot)

    def _line(self, fd: int, line: bytes) -> None:
        if fd == relay.SNAPSHOT_FD:
            self._answered(line)
        elif fd == relay.STDOUT_FD:
            self.arbiter.write_stdout(line)
        elif fd == relay.STDERR_FD:
            self._log.error(
                "Worker {worker.number} (pid {worker.pid}) stderr: {line}",
                worker=self,
                line=line.decode("utf-8", "replace").rstrip("\n"),
            )
        else:
            event = relay.worker_event(line, self.number)
            if event is None:
                self._log.error(
                    "Worker {worker.number} (pid {worker.pid}) wrote a log record that is not one: {record!r}",
                    worker=self,
                    record=line,
                )
            elif event.get(relay.READY):
                self.arbiter.worker_ready(self)
            else:
                self.arbiter.publish(event)

    def processEnded(self, reason) -> None:
        self.end(how_ended(reason.value))

    def end(self, how: str) -> None:
        """The worker has ended, as C{how} tells."""
        while self._asked:
            self._unanswered(self._asked.popleft())
        self.arbiter.worker_ended(self, how)
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def forget_deadline(self) -> None:
        """No longer kill the worker for not serving in time."""
        if self.ready_call is not None and self.ready_call.active():
            self.ready_call.cancel()
        self.ready_call = None

    def stop(self) -> None:
        """Ask the worker to drain and exit (SIGTERM), once."""
        if not self.stopping:
            self.stopping = True
            self.signal("TERM")


class Arbiter(service.Service):
    """
    Keeps C{count} workers serving: one in each place (slot), each place's
    share of the limits its own. A reload starts a whole new generation and
    stops the old one only once every new worker serves.
    """

    _log = Logger()

    def __init__(self, count: int, sockets, command, stop_seconds: float, reactor=None, publish=None, environ=None):
        if reactor is None:
            from twisted.internet import reactor
        self.count = count
        self.sockets = sockets
        self.command = command
        self.stop_seconds = stop_seconds
        self.reactor = reactor
        self.publish = globalLogPublisher if publish is None else publish
        self.environ = os.environ if environ is None else environ
        self.workers: set[Worker] = set()
        self.generation = 0
        self._numbers = itertools.count(1)
        self._failures = [0] * count
        self._restarts: dict[int, object] = {}
        # Workers that ended unasked and were replaced, for --metrics.
        self.restarts = 0
        self._previous_hangup = None

    # -- the workers of a generation

    def _current(self, generation: int) -> list[Worker]:
        return [worker for worker in self.workers if worker.generation == generation and not worker.stopping]

    def _spawn(self, slot: int, generation: int) -> Worker:
        worker = Worker(self, next(self._numbers), slot, generation)
        command = self.command(worker.number, slot)
        child_fds = {fd: "r" for fd in (relay.STDOUT_FD, relay.STDERR_FD, relay.EVENTS_FD, relay.SNAPSHOT_FD)}
        child_fds[relay.MASTER_FD] = "w"
        for index, shared in enumerate(self.sockets):
            child_fds[relay.FIRST_SOCKET_FD + index] = shared.fileno()
        self.workers.add(worker)
        try:
            self.reactor.spawnProcess(worker, command[0], command, env=dict(self.environ), childFDs=child_fds)
        except OSError as e:
            # Told once the caller has started the rest of its generation.
            self.reactor.callLater(0, worker.end, f"could not start: {e.strerror or e}")
            return worker
        self._log.info("Worker {worker.number} (pid {worker.pid}) starting", worker=worker)
        worker.ready_call = self.reactor.callLater(READY_SECONDS, self._not_ready, worker)
        return worker

    def _not_ready(self, worker: Worker) -> None:
        worker.ready_call = None
        self._log.warn(
            "Worker {worker.number} (pid {worker.pid}) not serving {seconds} s after it started: killing it",
            worker=worker,
            seconds=READY_SECONDS,
        )
        worker.signal("KILL")

    def worker_ready(self, worker: Worker) -> None:
        worker.forget_deadline()
        worker.ready_at = self.reactor.seconds()
        self._log.info("Worker {worker.number} (pid {worker.pid}) serving", worker=worker)
        if worker.generation > self.generation:
            coming = self._current(worker.generation)
            if len(coming) == self.count and all(each.serving for each in coming):
                self._reloaded(coming)

    def worker_ended(self, worker: Worker, ended: str) -> None:
        self.workers.discard(worker)
        worker.forget_deadline()
        if worker.stopping or not self.running:
            self._log.info("Worker {worker.number} (pid {worker.pid}) {ended}", worker=worker, ended=ended)
        elif worker.generation > self.generation:
            self._reload_failed(f"Worker {worker.number} (pid {worker.pid}) {ended} before it served")
        else:
            self._replace(worker, ended)

    def _replace(self, worker: Worker, ended: str) -> None:
        self.restarts += 1
        slot = worker.slot
        stable = worker.serving and self.reactor.seconds() - worker.ready_at >= STABLE_SECONDS
        self._failures[slot] = 0 if stable else self._failures[slot] + 1
        delay = restart_delay(self._failures[slot])
        self._log.warn(
            "Worker {worker.number} (pid {worker.pid}) {ended}; a new worker starts in its place {when}",
            worker=worker,
            ended=ended,
            when=f"in {delay:g} s" if delay else "at once",
        )
        self._restarts[slot] = self.reactor.callLater(delay, self._restart, slot)

    def _restart(self, slot: int) -> None:
        del self._restarts[slot]
        self._spawn(slot, self.generation)

    def _cancel_restarts(self) -> None:
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()

    # -- reload

    def _hangup(self, signum, frame) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Start a new generation of workers; once all serve, the old ones drain."""
        if not self.running:
            return
        if self._current(self.generation + 1):
            self._log.info("SIGHUP: a reload is under way already")
            return
        self._log.info(
            "Reloading: new workers start, then workers {old} drain", old=_names(self._current(self.generation))
        )
        for slot in range(self.count):
            self._spawn(slot, self.generation + 1)

    def _reloaded(self, coming: list[Worker]) -> None:
        old = [worker for worker in self.workers if worker.generation <= self.generation]
        self.generation += 1
        self._cancel_restarts()
        self._failures = [0] * self.count
        for worker in old:
            worker.stop()
        self._log.info("Reloaded: workers {new} serve, workers {old} drain", new=_names(coming), old=_names(old))

    def _reload_failed(self, why: str) -> None:
        for worker in self._current(self.generation + 1):
            worker.stop()
        self._log.error(
            "Reload failed: {why}; workers {old} go on serving", why=why, old=_names(self._current(self.generation))
        )

    # -- the master's own life

    def write_stdout(self, line: bytes) -> None:
        """A worker's standard output line, written whole to the master's."""
        relay.write_line(1, line)

    def startService(self) -> None:
        super().startService()
        self._previous_hangup = signal.signal(signal.SIGHUP, self._hangup)
        for slot in range(self.count):
            self._spawn(slot, self.generation)

    def stopService(self):
        super().stopService()
        signal.signal(signal.SIGHUP, self._previous_hangup or signal.SIG_DFL)
        self._cancel_restarts()
        workers = list(self.workers)
        if not workers:
            return defer.succeed(None)
        self._log.info("Stopping workers {numbers}", numbers=_names(workers))
        for worker in workers:
            worker.forget_deadline()
            worker.stop()
        kill = self.reactor.callLater(self.stop_seconds, self._kill, workers)
        stopped = defer.DeferredList([worker.ended for worker in workers])

        def done(_):
            if kill.active():
                kill.cancel()
            self._log.info("All workers stopped")

        return stopped.addCallback(done)

    def _kill(self, workers: list[Worker]) -> None:
        for worker in workers:
            if worker in self.workers:
                self._log.warn(
                    "Worker {worker.number} (pid {worker.pid}) still running {seconds:g} s after SIGTERM: killing it",
                    worker=worker,
                    seconds=self.stop_seconds,
                )
                worker.signal("KILL")


def master_service(options) -> service.MultiService:
    """The master: a shared socket per --listen description, and the arbiter of the --workers that serve them."""
    from twisted.internet import reactor

    top = service.MultiService()
    sockets = []
    for description in options["listen"]:
        shared = SharedSocket(description, server_endpoint(reactor, description))
        shared.setServiceParent(top)
        sockets.append(shared)
    count = options["workers"]
    command = functools.partial(
        worker_command, sys.executable, options.argv, count, options["max-scripts"], options["max-queue"]
    )
    stop_seconds = drain_seconds(options["shutdown-grace"], options["kill-grace"]) + STOP_MARGIN_SECONDS
    arbiter = Arbiter(count, sockets, command, stop_seconds)
    arbiter.setServiceParent(top)
    if options["metrics"]:
        # The master's only twisted.web: the listener asks the workers for their figures.
        from cgiserve.listen import ListeningService
        from cgiserve.metrics import WorkerFigures
        from cgiserve.monitor import MonitorSite

        endpoint = server_endpoint(reactor, options["metrics"], "--metrics")
        ListeningService(options["metrics"], endpoint, MonitorSite(WorkerFigures(arbiter))).setServiceParent(top)
    return top


def _cancelling(result, call):
    """Pass C{result} on, cancelling the delayed C{call} if it is still to come."""
    if call.active():
        call.cancel()
    return result
