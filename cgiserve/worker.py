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
    """Reads the pipe the master never writes: its end means the master is gone, and so should the worker be."""

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        os.set_blocking(relay.MASTER_FD, False)

    def fileno(self) -> int:
        return relay.MASTER_FD

    def logPrefix(self) -> str:
        return "master"

    def doRead(self):
        # Readable only once the master's end has closed; the reactor then calls connectionLost.
        return main.CONNECTION_DONE

    def connectionLost(self, reason) -> None:
        # Also called as the reactor shuts down, with the master still there.
        if not _master_gone():
            return
        _log.warn("The master is gone: stopping")
        try:
            self.reactor.stop()
        except error.ReactorNotRunning:  # stopping already
            pass


def _master_gone() -> bool:
    """Whether the master's end of the pipe has closed (it never writes)."""
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
    reactor.addReader(_MasterWatch(reactor))
    reactor.callWhenRunning(_log.info, "Worker {number} ready", number=number, **{relay.READY: True})
    reactor.run()


if __name__ == "__main__":
    serve(sys.argv[1:])
