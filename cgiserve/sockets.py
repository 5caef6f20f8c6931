# -*- test-case-name: tests.test_sockets,tests.test_e2e_workers -*-
"""
The --listen sockets of C{--workers}: the master opens each once, its
workers serve them, and the kernel hands each new connection to one worker.

The master never accepts on a socket, and only the master closes one for
good: a worker's copy closes without shutting the socket down for the
others, and without touching a unix: socket's path.
"""

from __future__ import annotations

import os
import socket

from twisted.application import service
from twisted.internet import defer, interfaces, protocol, tcp, unix
from twisted.logger import Logger
from zope.interface import implementer

from cgiserve.listen import CannotListen, reason, server_endpoint

# The endpoint types whose sockets a worker can be handed; haproxy: may wrap any of them.
SHAREABLE_BASES = ("tcp", "tcp6", "unix", "ssl", "systemd")
SHAREABLE = ", ".join(f"{base}:" for base in SHAREABLE_BASES) + " (behind haproxy: or not)"
_PROXY = "haproxy:"


def _layers(description: str) -> tuple[int, str]:
    """How many haproxy: wrappers a description has, and what they wrap."""
    wrappers = 0
    # Twisted matches endpoint types in any case.
    while description[: len(_PROXY)].lower() == _PROXY:
        description = description[len(_PROXY) :]
        wrappers += 1
    return wrappers, description


def shareable(description: str) -> bool:
    """Whether workers can serve the socket that this --listen description opens."""
    return _layers(description)[1].partition(":")[0].lower() in SHAREABLE_BASES


class _Unserved(protocol.Factory):
    """What the master listens with; never asked for a protocol, as the master never accepts."""

    noisy = False

    def logPrefix(self) -> str:
        return "Site"

    def buildProtocol(self, addr):
        return None


class SharedSocket(service.Service):
    """
    One --listen socket, opened by the master before twistd gives up root
    (for a privileged port), and kept open for the workers until the
    master stops; the master itself never reads from it.
    """

    def __init__(self, description: str, endpoint) -> None:
        self.description = description
        self.endpoint = endpoint
        self.port = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        failures = []
        # The endpoints that can be shared all listen at once.
        self.endpoint.listen(_Unserved()).addCallbacks(self._listening, failures.append)
        if failures:
            raise CannotListen(self.description, reason(failures[0].value))

    def _listening(self, port) -> None:
        port.stopReading()
        # As for a socket Twisted adopts: closing our copy must not shut
        # the socket down in the workers that still serve it.
        port._shouldShutdown = False
        self.port = port

    def fileno(self) -> int:
        return self.port.fileno()

    def stopService(self):
        super().stopService()
        return self.port.stopListening()


def _family(fd: int) -> int:
    """The address family of the socket on a descriptor."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return sock.family
    finally:
        sock.close()


class _OneAccept:
    """
    A worker's port takes one connection each time the socket is ready,
    as nginx does by default (multi_accept off), not as many as wait: a
    burst of connections is spread over the workers awake, not taken by
    the first one that wakes, whose share of the script slots they would
    then queue for while another worker's stay free.
    """

    numberAccepts = property(lambda self: 1, lambda self, value: None)


class _InheritedTCPPort(_OneAccept, tcp.Port):
    """A worker's copy of the master's TCP socket, closed without shutting it down for the others."""


class _InheritedUNIXPort(_OneAccept, unix.Port):
    """A worker's copy of the master's unix: socket: the master alone chmods and removes the path."""

    _log = Logger()

    def startListening(self) -> None:
        # As every Twisted port does: a descriptor kept to refuse a connection when out of them.
        tcp._reservedFD.reserve()
        skt, self._preexistingSocket = self._preexistingSocket, None
        self._shouldShutdown = False
        self._log.info(
            "{prefix} starting on {path!r}", prefix=self._getLogPrefix(self.factory), path=os.fsdecode(self._bindPath)
        )
        self.factory.doStart()
        self.connected = True
        self.socket = skt
        self.fileno = skt.fileno
        self.startReading()

    def connectionLost(self, reason) -> None:
        # The TCP port's ending: close this copy, leave the path alone.
        super(unix.Port, self).connectionLost(reason)


@implementer(interfaces.IStreamServerEndpoint)
class InheritedSocket:
    """The endpoint of a socket the master passed to this worker on C{fd}."""

    def __init__(self, reactor, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd

    def listen(self, factory):
        return defer.execute(self._adopt, factory)

    def _adopt(self, factory):
        family = _family(self.fd)
        if family == socket.AF_UNIX:
            port = _InheritedUNIXPort._fromListeningDescriptor(self.reactor, self.fd, factory)
        else:
            port = _InheritedTCPPort._fromListeningDescriptor(self.reactor, self.fd, family, factory)
        port.startListening()
        # The port has its own copy.
        os.close(self.fd)
        return port


class _TLSOver:
    """
    A reactor as far as an ssl: endpoint needs one: its listenSSL serves
    TLS, with the endpoint's own certificates and protocols (HTTP/2 too),
    on an inherited socket instead of a new one.
    """

    def __init__(self, inherited: InheritedSocket) -> None:
        self.inherited = inherited

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return self.inherited._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))


def inherited_endpoint(reactor, description: str, fd: int):
    """
    The endpoint that serves, on the socket the master passed on C{fd},
    what the --listen description would: TLS for ssl: (its files read
    afresh), the PROXY protocol for each haproxy: wrapper.
    """
    wrappers, base = _layers(description)
    endpoint = InheritedSocket(reactor, fd)
    if base.partition(":")[0].lower() == "ssl":
        endpoint = server_endpoint(_TLSOver(endpoint), base)
    if wrappers:
        from twisted.protocols.haproxy import proxyEndpoint

        for _ in range(wrappers):
            endpoint = proxyEndpoint(endpoint)
    return endpoint
