# -*- test-case-name: tests.test_warm,tests.test_e2e_warm -*-
"""Warm Python: scripts of a --warm-python interpreter forked from a preloaded helper instead of exec'd, behind the runner's spawner."""

from __future__ import annotations

import array
import errno
import itertools
import os
import select
import shutil
import signal
import socket
import time

from twisted.application import service
from twisted.internet import abstract, defer, main, protocol, task
from twisted.logger import Logger

from cgiserve import spawn, warm_helper
from cgiserve.limits import Limits
from cgiserve.shebang import HEAD_BYTES, interpreter_for
from cgiserve.spawn import ScriptProcess, encode_environ, open_pipes, posix_spawn, spawn_script

HELPER = warm_helper.__file__
PROBE = os.path.join(os.path.dirname(HELPER), "warm_probe.py")

# The standard library modules CGI scripts import most (none deprecated,
# nothing outside the standard library), which import without side
# effects. Each costs every request a little: the helper's memory is what
# each fork copies the page tables of, so the list stays short.
DEFAULT_PRELOAD = (
    "base64", "collections", "datetime", "decimal", "email.message", "email.parser", "email.utils", "hashlib",
    "html", "http.cookies", "json", "math", "random", "re", "string", "textwrap", "time", "urllib.parse", "uuid",
)  # fmt: skip

# A pre-fork helper shares one hash secret with all its children (as
# gunicorn --preload does); a fresh helper after this many requests, or
# this long, bounds what one secret serves.
RECYCLE_REQUESTS = 10_000
RECYCLE_SECONDS = 600.0

# Requests handed to a helper that has not yet answered with a child: more
# than this and it is busy (scripts exec); one this old and it is stuck.
MAX_PENDING = 16
STUCK_SECONDS = 5.0

# A helper that dies is restarted after a pause that doubles up to the
# maximum, and starts at the minimum again once one has lived this long.
MIN_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
HEALTHY_SECONDS = 60.0

# How often the interpreter and its standard library are checked for
# changes on disk, and how long the start-up self-test may take.
CHECK_SECONDS = 2.0
PROBE_SECONDS = 20.0

# What the probe runs with, beside the scripts' base environment.
_PROBE_ENV = {"GATEWAY_INTERFACE": "CGI/1.1", "REQUEST_METHOD": "GET", "QUERY_STRING": "a=1&b=%C3%A9"}
_PROBE_ARGS = [b"an argument", "caf\u00e9".encode(), b""]

# A child whose helper died before it could report its exit: its status
# is lost, and it is reported as this (exit status 255).
_LOST_STATUS = 255 << 8


def supported() -> str | None:
    """Why warm Python cannot work here, or None when it can (Linux, glibc's posix_spawn extensions)."""
    if not hasattr(os, "pidfd_open") or not hasattr(socket, "SOCK_SEQPACKET"):
        return "warm Python needs Linux"
    if spawn._libc is None:
        return "warm Python needs glibc 2.34 or later"
    return None


def startup_variables(env: dict[str, str]) -> dict[str, str]:
    """The variables an interpreter reads as it starts (PYTHON*, LC_*, LANG, HOME): they must be the helper's."""
    return {name: value for name, value in env.items() if name.startswith(("PYTHON", "LC_")) or name in ("LANG", "HOME")}


class HandoverFailed(Exception):
    """The helper did not start the script (it refused, or died first with the request unread): exec instead."""


# -- the server's side of one helper


class _Channel(abstract.FileDescriptor):
    """The helper's socket in the reactor: each message read is handed to C{received}."""

    def __init__(self, reactor, sock: socket.socket, received, lost) -> None:
        super().__init__(reactor)
        self.socket = sock
        self.received = received
        self.lost = lost
        self.startReading()

    def fileno(self) -> int:
        return self.socket.fileno()

    def doRead(self):
        for _ in range(64):
            try:
                message = self.socket.recv(warm_helper.MAX_MESSAGE_BYTES)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return main.CONNECTION_LOST
            if not message:
                return main.CONNECTION_DONE
            self.received(message)
        return None

    def drain(self) -> None:
        """Take every message already queued (the helper has ended: nothing more will come)."""
        while self.connected and self.doRead() is None and _readable(self.socket):
            pass

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.socket.close()
        self.lost()


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class WarmProcess(ScriptProcess):
    """A script forked by a helper: the helper, its parent, reports its exit (L{Helper})."""

    def watch_exit(self) -> None:
        pass


class _Orphan(abstract.FileDescriptor):
    """A child whose helper died: a pidfd says when it exits; its status went with the helper."""

    def __init__(self, reactor, process: WarmProcess, pidfd: int) -> None:
        super().__init__(reactor)
        self.process = process
        self.pidfd = pidfd
        self.startReading()

    def fileno(self) -> int:
        return self.pidfd

    def doRead(self):
        return main.CONNECTION_DONE

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        os.close(self.pidfd)
        self.process.processEnded(_LOST_STATUS)


class _Output(protocol.ProcessProtocol):
    """The helper's own stdout and stderr, logged line by line, and its end."""

    def __init__(self, helper: "Helper") -> None:
        self.helper = helper
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        *lines, self._partial[fd] = (self._partial[fd] + data).split(b"\n")
        for line in lines:
            self.helper.pool._log.warn(
                "Warm Python {interpreter}: helper {pid}: {line}",
                interpreter=self.helper.pool.interpreter,
                pid=self.helper.pid,
                line=line.decode("utf-8", "replace"),
            )

    def processEnded(self, reason) -> None:
        self.helper.ended(reason.value)


class Helper:
    """
    One helper process: the requests handed to it that await their child,
    and the children it forked, whose exits it reports.
    """

    def __init__(self, pool: "WarmPython") -> None:
        self.pool = pool
        self.reactor = pool.reactor
        self.pid: int | None = None
        self.started_at = self.reactor.seconds()
        self.served = 0
        self.retired = False
        self.gone = False
        # Fires with the preloads that failed once the helper says it is ready.
        self.ready = defer.Deferred()
        self.is_ready = False
        self.stdlib: str | None = None
        self.pending: dict[bytes, tuple[defer.Deferred, object, object, float]] = {}
        self.children: dict[int, WarmProcess] = {}
        self._tokens = itertools.count(1)
        self._channel: _Channel | None = None
        self.process = None

    def start(self) -> None:
        """Start the helper in the scripts' base environment; OSError if it cannot be."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, warm_helper.MAX_MESSAGE_BYTES * 2)
        ours.setblocking(False)
        pipes = open_pipes(stdin=False)
        pool = self.pool
        argv = [os.fsencode(pool.interpreter), os.fsencode(HELPER), b"--preload", ",".join(pool.preload).encode()]
        # The limits are for its children, which set them before the script runs, never for itself.
        argv += pool.limits.options()
        try:
            self.pid = posix_spawn(
                os.fsencode(pool.interpreter),
                argv,
                encode_environ(pool.env),
                {0: theirs.fileno(), 1: pipes.child_ends[1], 2: pipes.child_ends[2]},
                b"/",
            )
        except OSError:
            ours.close()
            pipes.close_parent_ends()
            raise
        finally:
            theirs.close()
            pipes.close_child_ends()
        self._channel = _Channel(self.reactor, ours, self._received, self._channel_lost)
        outputs = {fd: end for fd, end in pipes.parent_ends.items() if fd}
        self.process = ScriptProcess(self.reactor, self.pid, _Output(self), outputs)

    # -- handing requests over

    def hand_over(self, script_protocol, cwd: str, script: str, argv0: str, args, env, stdin: bool):
        """
        Send a request to the helper: a Deferred that fires with the
        script's L{WarmProcess} once the helper has forked it, or fails with
        L{HandoverFailed}; or a string saying why not now (busy).
        """
        if len(self.pending) >= MAX_PENDING:
            return "warm helper busy"
        pipes = open_pipes(stdin)
        token = b"%d" % next(self._tokens)
        message = warm_helper.encode_run(
            token, os.fsencode(cwd), os.fsencode(script), os.fsencode(argv0), list(args), encode_environ(env)
        )
        fds = array.array("i", [pipes.child_ends[0], pipes.child_ends[1], pipes.child_ends[2]])
        try:
            self._channel.socket.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        except OSError as e:
            pipes.close_parent_ends()
            return "warm helper busy" if isinstance(e, BlockingIOError) else f"warm helper unreachable: {e.strerror}"
        finally:
            pipes.close_child_ends()
        self.served += 1
        started = defer.Deferred()
        self.pending[token] = (started, script_protocol, pipes, self.reactor.seconds())
        return started

    def _received(self, message: bytes) -> None:
        kind, fields = warm_helper.decode_reply(message)
        if kind == warm_helper.STARTED:
            started, script_protocol, pipes, _ = self.pending.pop(fields[0])
            pid = int(fields[1])
            self.children[pid] = WarmProcess(self.reactor, pid, script_protocol, pipes.parent_ends)
            started.callback(self.children[pid])
        elif kind == warm_helper.EXITED:
            process = self.children.pop(int(fields[0]), None)
            if process is not None:
                process.processEnded(int(fields[1]))
        elif kind == warm_helper.REFUSED:
            started, _, pipes, _ = self.pending.pop(fields[0])
            pipes.close_parent_ends()
            started.errback(HandoverFailed(f"warm helper refused: {fields[1].decode('utf-8', 'replace')}"))
        elif kind == warm_helper.READY:
            failed = [name for name in fields[1].decode().split(",") if name]
            self.stdlib = os.fsdecode(fields[2])
            self.is_ready = True
            self.ready.callback(failed)

    def stuck(self) -> bool:
        """Whether a request has waited too long for its child."""
        now = self.reactor.seconds()
        return any(now - since > STUCK_SECONDS for *_, since in self.pending.values())

    def retire(self) -> None:
        """Take no more requests; the helper exits once its children have ended."""
        self.retired = True
        if self._channel is not None and not self.gone:
            try:
                self._channel.socket.send(warm_helper.QUIT)
            except OSError:
                pass

    def kill(self) -> None:
        if self.pid is not None and not self.gone:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- its end

    def _channel_lost(self) -> None:
        self._lose("its channel closed")

    def ended(self, status) -> None:
        if self._channel is not None:
            # Its last replies may still wait unread behind its end.
            self._channel.drain()
        self._lose(str(status).rstrip("."))

    def _lose(self, why: str) -> None:
        if self.gone:
            return
        self.gone = True
        if self._channel is not None and self._channel.connected:
            self._channel.loseConnection()
        for started, _, pipes, _ in self.pending.values():
            _settle_unstarted(self.reactor, started, pipes)
        self.pending.clear()
        for pid, process in self.children.items():
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                process.processEnded(_LOST_STATUS)
                continue
            _Orphan(self.reactor, process, pidfd)
        if self.children:
            self.pool._log.warn(
                "Warm Python {interpreter}: helper {pid} died with {count} scripts running; their exit status is lost",
                interpreter=self.pool.interpreter,
                pid=self.pid,
                count=len(self.children),
            )
        self.children.clear()
        if not self.ready.called:
            self.ready.errback(HandoverFailed(f"warm helper {self.pid} ended before it was ready: {why}"))
        self.pool.helper_lost(self, why)


# How long, after its helper died, a request's pipes may take to be let go
# of by the kernel (with the messages the helper never read), and how often
# that is looked at.
UNSTARTED_SECONDS = 1.0
UNSTARTED_POLL_SECONDS = 0.02


def _settle_unstarted(reactor, started: defer.Deferred, pipes, waited: float = 0.0) -> None:
    """
    Fail a request whose helper died before answering: exec it once no
    one holds its pipes (the request died unread with the helper), but
    if a child still holds them after L{UNSTARTED_SECONDS}, it may be
    running the script, and running it twice would be worse than a 502.
    """
    poller = select.poll()
    poller.register(pipes.parent_ends[1][0], select.POLLIN)
    if any(events & select.POLLHUP for _, events in poller.poll(0)):
        pipes.close_parent_ends()
        started.errback(HandoverFailed("warm helper died before it started the script"))
    elif waited >= UNSTARTED_SECONDS:
        pipes.close_parent_ends()
        started.errback(OSError(errno.ECHILD, "warm helper died as it started the script"))
    else:
        reactor.callLater(UNSTARTED_POLL_SECONDS, _settle_unstarted, reactor, started, pipes, waited + UNSTARTED_POLL_SECONDS)


# -- one interpreter's helpers over time


class WarmPython(service.Service):
    """
    Keeps a ready helper for one interpreter, started with the scripts'
    base environment: checked once by a self-test (a probe run both
    fresh and warm, compared byte for byte), restarted with backoff when
    it dies, recycled after L{RECYCLE_REQUESTS} or L{RECYCLE_SECONDS},
    and restarted when the interpreter or its standard library changes on
    disk, or on L{reload}. Every change of state is one log line. Its
    children set C{limits} on themselves before they run the script;
    C{spawner} runs the fresh probe (under the same limits).
    """

    _log = Logger()

    def __init__(
        self, interpreter: str, env: dict[str, str], preload, reactor=None, spawner=spawn_script, limits=Limits()
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.interpreter = interpreter
        self.limits = limits
        self.env = dict(env)
        self.startup = startup_variables(self.env)
        self.preload = tuple(preload)
        self.reactor = reactor
        self.spawner = spawner
        self.current: Helper | None = None
        self.successor: Helper | None = None
        self.retired: list[Helper] = []
        # None until the self-test has passed; a reason once warm mode is off.
        self.verified = False
        self.off: str | None = None
        self._backoff = MIN_BACKOFF_SECONDS
        self._restart_call = None
        self._stamps: dict[str, tuple] = {}
        self._check = task.LoopingCall(self._check_health)
        self._check.clock = reactor

    @property
    def state(self) -> str:
        """Why scripts of this interpreter exec now, or "ready"."""
        if self.off is not None:
            return "warm mode off"
        if self.current is None or not self.current.is_ready:
            return "warm helper starting" if self._restart_call is None else "warm helper restarting"
        if not self.verified:
            return "warm helper testing itself"
        return "ready"

    def startService(self) -> None:
        super().startService()
        self._start()
        self._check.start(CHECK_SECONDS, now=False)

    def stopService(self):
        super().stopService()
        if self._check.running:
            self._check.stop()
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        helpers = [helper for helper in (self.current, self.successor, *self.retired) if helper is not None]
        for helper in helpers:
            helper.retire()
        return defer.succeed(None)

    def hand_over(self, script_protocol, cwd, script, argv0, args, env, stdin):
        """A Deferred of the script's process from the current helper, or why it must exec."""
        if self.state != "ready":
            return self.state
        helper = self.current
        if self.successor is None and (
            helper.served >= RECYCLE_REQUESTS or self.reactor.seconds() - helper.started_at >= RECYCLE_SECONDS
        ):
            self._log.info(
                "Warm Python {interpreter}: recycling helper {pid} after {served} requests",
                interpreter=self.interpreter,
                pid=helper.pid,
                served=helper.served,
            )
            self._start(successor=True)
        return helper.hand_over(script_protocol, cwd, script, argv0, args, env, stdin)

    def reload(self) -> None:
        """Start a fresh helper and test it again; the current one serves until it has passed."""
        self.off = None
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
            self._restart_call = None
        if self.current is None:
            self._start()
        elif self.successor is None:
            self._start(successor=True, verify=True)

    # -- starting and losing helpers

    def _start(self, successor: bool = False, verify: bool | None = None) -> None:
        helper = Helper(self)
        try:
            helper.start()
        except OSError as e:
            self._log.error(
                "Warm Python {interpreter}: cannot start a helper: {error}", interpreter=self.interpreter, error=e.strerror
            )
            self._schedule_restart()
            return
        self._log.info("Warm Python {interpreter}: helper {pid} starting", interpreter=self.interpreter, pid=helper.pid)
        if successor:
            self.successor = helper
        else:
            self.current = helper
        started = time.monotonic()
        helper.ready.addCallback(self._ready, helper, started, not self.verified if verify is None else verify)
        helper.ready.addErrback(lambda failure: None)

    def _ready(self, failed, helper: Helper, started: float, verify: bool) -> None:
        self._stamps = {path: _stamp(path) for path in (self.interpreter, helper.stdlib)}
        self._log.info(
            "Warm Python {interpreter}: helper {pid} ready in {seconds:.2f} s, {count} modules preloaded{failed}",
            interpreter=self.interpreter,
            pid=helper.pid,
            seconds=time.monotonic() - started,
            count=len(self.preload) - len(failed),
            failed=f" (could not import {', '.join(failed)})" if failed else "",
        )
        if verify:
            self._probe(helper).addCallback(self._probed, helper)
        else:
            self._promote(helper)

    def _promote(self, helper: Helper) -> None:
        if helper is self.successor:
            old, self.current, self.successor = self.current, helper, None
            if old is not None:
                old.retire()
                self.retired.append(old)

    def _probed(self, difference: str | None, helper: Helper) -> None:
        if helper.gone:
            return
        if difference is not None:
            self.off = f"self-test failed: {difference}"
            self._log.error(
                "Warm Python {interpreter}: self-test failed, warm mode off: {difference}",
                interpreter=self.interpreter,
                difference=difference,
            )
            for running in (self.current, self.successor):
                if running is not None:
                    running.retire()
                    self.retired.append(running)
            self.current = self.successor = None
            return
        self.verified = True
        self._promote(helper)
        self._log.info("Warm Python {interpreter}: self-test passed; scripts start warm", interpreter=self.interpreter)

    def helper_lost(self, helper: Helper, why: str) -> None:
        if helper in self.retired:
            self.retired.remove(helper)
            return
        if helper.retired or not self.running:
            return
        if not helper.is_ready and not self.verified:
            # It never came up (an interpreter too old, say): no use retrying until told (SIGHUP).
            self.current = self.successor = None
            self.off = f"helper {helper.pid} ended before it was ready"
            self._log.error(
                "Warm Python {interpreter}: helper {pid} ended before it was ready ({why}); warm mode off",
                interpreter=self.interpreter,
                pid=helper.pid,
                why=why,
            )
            return
        self._log.warn(
            "Warm Python {interpreter}: helper {pid} ended ({why}); scripts exec until a new one is ready",
            interpreter=self.interpreter,
            pid=helper.pid,
            why=why,
        )
        if helper is self.successor:
            self.successor = None
        if helper is self.current:
            self.current = None
        lived = self.reactor.seconds() - helper.started_at
        if lived >= HEALTHY_SECONDS:
            self._backoff = MIN_BACKOFF_SECONDS
        if self.current is None:
            self._schedule_restart()

    def _schedule_restart(self) -> None:
        delay, self._backoff = self._backoff, min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        self._log.info(
            "Warm Python {interpreter}: restarting the helper in {delay} s", interpreter=self.interpreter, delay=delay
        )
        self._restart_call = self.reactor.callLater(delay, self._restart)

    def _restart(self) -> None:
        self._restart_call = None
        if self.running and self.current is None:
            self._start()

    def _check_health(self) -> None:
        """Kill a stuck helper; restart one whose interpreter or standard library changed on disk."""
        for helper in (self.current, self.successor):
            if helper is not None and helper.stuck():
                self._log.warn(
                    "Warm Python {interpreter}: helper {pid} stuck for {seconds} s; killing it",
                    interpreter=self.interpreter,
                    pid=helper.pid,
                    seconds=STUCK_SECONDS,
                )
                helper.kill()
        if self.current is None or self.successor is not None:
            return
        for path, stamp in self._stamps.items():
            if _stamp(path) != stamp:
                self._log.info(
                    "Warm Python {interpreter}: {path} changed on disk; starting a fresh helper",
                    interpreter=self.interpreter,
                    path=path,
                )
                self._start(successor=True, verify=True)
                return

    # -- the self-test

    def _probe(self, helper: Helper) -> defer.Deferred:
        """Run the probe fresh and through the helper: a Deferred of the first difference, or None."""
        env = {**self.env, **_PROBE_ENV}
        cwd = os.path.dirname(PROBE)
        fresh, warm = _Collector(), _Collector()
        try:
            self.spawner(self.reactor, fresh, self.interpreter, [os.fsencode(self.interpreter), os.fsencode(PROBE), *_PROBE_ARGS], env, cwd, False)
        except OSError as e:
            return defer.succeed(f"the probe could not be executed: {e.strerror}")
        started = helper.hand_over(warm, cwd, PROBE, self.interpreter, _PROBE_ARGS, env, False)
        if isinstance(started, str):
            return defer.succeed(f"the probe was not handed over: {started}")
        started.addErrback(lambda failure: warm.done.callback(("not started", str(failure.value), b"")))
        both = defer.gatherResults([fresh.done, warm.done])
        both.addTimeout(PROBE_SECONDS, self.reactor)
        both.addCallbacks(lambda results: _difference(*results), lambda failure: f"the probe did not end: {failure.value}")
        return both


class _Collector(protocol.ProcessProtocol):
    """A probe run: everything it writes, and how it ended."""

    def __init__(self) -> None:
        self.output = {1: [], 2: []}
        self.done = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.output[fd].append(data)

    def processEnded(self, reason) -> None:
        status = reason.value
        ended = f"exit {status.exitCode}, signal {status.signal}"
        self.done.callback((ended, b"".join(self.output[1]), b"".join(self.output[2])))


def _difference(fresh, warm) -> str | None:
    """The first way a warm probe run differs from a fresh one, or None."""
    for what, a, b in zip(("ended", "stdout", "stderr"), fresh, warm):
        if a == b:
            continue
        if isinstance(a, bytes):
            for line_a, line_b in itertools.zip_longest(a.splitlines(), b.splitlines()):
                if line_a != line_b:
                    return f"{what}: fresh {line_a!r}, warm {line_b!r}"
        return f"{what}: fresh {a!r}, warm {b!r}"
    return None


def _stamp(path: str | None):
    """What changes when a file or directory is replaced or edited (its inode, its times)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns


# -- the runner's spawner


class WarmSpawner:
    """
    The script runner's spawner: a script whose interpreter (its #! line,
    /usr/bin/env NAME on the script's PATH, or its --interpreter mapping)
    is exactly a --warm-python one, with no interpreter options and the
    helper's start-up variables, is handed to that interpreter's helper;
    every other script, or one the helper cannot take now, is exec'd by
    C{fallback}. The script's protocol says which (C{warm}) and why
    (C{exec_reason}).
    """

    def __init__(self, pools: dict[str, WarmPython], fallback=spawn_script) -> None:
        self.pools = pools
        self.fallback = fallback

    def __call__(self, reactor, script_protocol, executable, argv, env, cwd, stdin=True):
        choice = self.choose(script_protocol.script, executable, argv, env)
        if isinstance(choice, str):
            script_protocol.exec_reason = choice
            return self.fallback(reactor, script_protocol, executable, argv, env, cwd, stdin)
        pool, argv0, args = choice
        started = pool.hand_over(script_protocol, cwd, script_protocol.script, argv0, args, env, stdin)
        if isinstance(started, str):
            script_protocol.exec_reason = started
            return self.fallback(reactor, script_protocol, executable, argv, env, cwd, stdin)

        def warm(process):
            script_protocol.warm = True
            if pool.limits:
                script_protocol.limits = pool.limits
            return process

        def refused(failure):
            failure.trap(HandoverFailed)
            script_protocol.exec_reason = str(failure.value)
            return self.fallback(reactor, script_protocol, executable, argv, env, cwd, stdin)

        return started.addCallbacks(warm, refused)

    def choose(self, script: str, executable: str, argv, env):
        """The pool, argv[0] and arguments for a warm start, or why the script must exec."""
        mapped = executable if executable != script else None
        head = b""
        if mapped is None:
            try:
                with open(script, "rb") as f:
                    head = f.read(HEAD_BYTES)
            except OSError as e:
                return f"its #! line cannot be read: {e.strerror}"
        interpreter = interpreter_for(head, mapped)
        if interpreter is None:
            return "no #! line"
        if interpreter.options:
            return "its #! line has interpreter options"
        if interpreter.launcher is not None and not os.access(interpreter.launcher, os.X_OK):
            # The kernel would fail to run the script: the exec says how.
            return f"{interpreter.launcher} cannot be executed"
        program = interpreter.program or _search(interpreter.search, env.get("PATH", os.defpath), os.path.dirname(script))
        pool = self.pools.get(program)
        if pool is None:
            return f"{program or interpreter.search} is not a --warm-python interpreter"
        if startup_variables(env) != pool.startup:
            return "its start-up variables (PYTHON*, LC_*, LANG, HOME) are not the helper's"
        return pool, interpreter.argv0, argv[2:] if mapped else argv[1:]


def _search(name: str, path: str, directory: str) -> str | None:
    """Where env finds C{name} on C{path}, a script's PATH, in C{directory}, the script's own (relative entries)."""
    entries = [entry if entry.startswith("/") else os.path.join(directory, entry) for entry in path.split(os.pathsep)]
    return shutil.which(name, path=os.pathsep.join(entries))


class WarmPythons(service.MultiService):
    """
    The pools of every --warm-python interpreter, their spawner, and SIGHUP
    to restart their helpers. C{spawner} execs the scripts that do not
    start warm, and the probes; warm ones start under C{limits}, as it
    starts them.
    """

    _log = Logger()

    def __init__(
        self, interpreters, env: dict[str, str], preload, reactor=None, spawner=spawn_script, limits=Limits()
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.pools = {
            interpreter: WarmPython(interpreter, env, preload, reactor, spawner, limits) for interpreter in interpreters
        }
        for pool in self.pools.values():
            pool.setServiceParent(self)
        self.spawner = WarmSpawner(self.pools, fallback=spawner)
        self._previous_hangup = None

    def startService(self) -> None:
        super().startService()
        self._previous_hangup = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self):
        signal.signal(signal.SIGHUP, self._previous_hangup or signal.SIG_DFL)
        return super().stopService()

    def _hangup(self, signum, frame) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        self._log.info("SIGHUP: restarting the warm Python helpers")
        for pool in self.pools.values():
            pool.reload()
