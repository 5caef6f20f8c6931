# -*- test-case-name: tests.test_e2e_workers -*-
"""
A worker of C{--workers} (C{python -m cgiserve.worker NUMBER OPTIONS}):
serves the sockets its master passed, with the serving tree of a single
process, until SIGTERM or until its master is gone.

It reads its options, the code, the password file and the certificates
afresh, so that the workers a reload starts serve what is on disk now.
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import error, interfaces, main
from twisted.logger import Logger, globalLogBeginner
from twisted.python import usage
from zope.interface import implementer

from cgiserve import relay
from cgiserve.serve import serving_service
from cgiserve.sockets import inherited_endpoint
from cgiserve.tap import Options

_log = Logger(namespace="cgiserve.worker")


@implementer(interfaces.IReadDescriptor)
class _MasterWatch:
    """
    Reads the pipe from the master: a newline asks for a snapshot of the
    C{metrics} (with --metrics), answered on the snapshot pipe; its end
    means the master is gone, and so should the worker be.
    """

    def __init__(self, reactor, metrics=None) -> None:
        self.reactor = reactor
        self.metrics = metrics
        os.set_blocking(relay.MASTER_FD, False)

    def fileno(self) -> int:
        return relay.MASTER_FD

    def logPrefix(self) -> str:
        return "master"

    def doRead(self):
        try:
            asked = os.read(relay.MASTER_FD, 4096)
        except BlockingIOError:
            return None
        if not asked:
            # The master's end has closed; the reactor then calls connectionLost.
            return main.CONNECTION_DONE
        if self.metrics is not None:
            for _ in range(asked.count(b"\n")):
                self._answer()
        return None

    def _answer(self) -> None:
        """One snapshot line; "null" if it cannot be made, so that the master's next answer is still its own."""
        try:
            line = self.metrics.snapshot_line()
        except Exception:  # a bug in the figures must cost the figures, not the master watch
            _log.failure("Cannot make a snapshot of the metrics")
            line = b"null\n"
        relay.write_line(relay.SNAPSHOT_FD, line)

    def connectionLost(self, reason) -> None:
        # Also called as the reactor shuts down, with the master still there;
        # and at once, without a doRead, when epoll tells of the hang-up alone.
        if not _master_gone():
            return
        _log.warn("The master is gone: stopping")
        try:
            self.reactor.stop()
        except error.ReactorNotRunning:  # stopping already
            pass


def _master_gone() -> bool:
    """Whether the master's end of the pipe has closed."""
    try:
        return os.read(relay.MASTER_FD, 1) == b""
    except BlockingIOError:
        return False


class WorkerOptions(Options):
    """The master's own command line: its sockets are open already, so their descriptions are not checked again."""

    def check_listen(self) -> None:
        pass


def _ignore_hangup(signum, frame) -> None:
    _log.info("SIGHUP ignored: the master reloads the workers")


def serve(argv: list[str]) -> None:
    number, *args = argv
    globalLogBeginner.beginLoggingTo([relay.events_observer()], redirectStandardIO=True)

    options = WorkerOptions()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        sys.exit(f"cgiserve worker {number}: {e}")

    from twisted.internet import reactor

    endpoints = [
        inherited_endpoint(reactor, description, relay.FIRST_SOCKET_FD + index)
        for index, description in enumerate(options["listen"])
    ]
    top = serving_service(options, endpoints)
    # Before the warm helpers take SIGHUP for their own restart.
    signal.signal(signal.SIGHUP, _ignore_hangup)
    top.privilegedStartService()
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    metrics = top.namedServices.get("metrics")
    reactor.addReader(_MasterWatch(reactor, metrics))
    reactor.callWhenRunning(_log.info, "Worker {number} ready", number=number, **{relay.READY: True})
    reactor.run()


if __name__ == "__main__":
    serve(sys.argv[1:])
