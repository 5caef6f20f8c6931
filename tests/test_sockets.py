"""
Tests for cgiserve.sockets: which --listen sockets workers can share, the
master's socket that it never reads, and a worker's copy of it, on real
sockets and the global reactor, which is never run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import select
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest
from twisted.internet import reactor, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.python.failure import Failure

from cgiserve.listen import CannotListen, server_endpoint
from cgiserve.sockets import SharedSocket, _InheritedTCPPort, _InheritedUNIXPort, _layers, inherited_endpoint, shareable
from tests.server import CHECKOUT

needs_tls = pytest.mark.skipif(importlib.util.find_spec("OpenSSL") is None, reason="needs the tls extra")
needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads a Linux listening socket's queue")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- shareable, _layers


@pytest.mark.parametrize(
    "description, layers",
    [
        ("tcp:8080", (0, "tcp:8080")),
        ("haproxy:tcp:8080:interface=127.0.0.1", (1, "tcp:8080:interface=127.0.0.1")),
        ("haproxy:haproxy:unix:/run/x.sock:mode=660", (2, "unix:/run/x.sock:mode=660")),
        ("unix:/run/haproxy:x.sock", (0, "unix:/run/haproxy:x.sock")),
        ("haproxy:", (1, "")),
    ],
)
def test_layers(description, layers):
    """The leading haproxy: wrappers are counted and taken off; a later "haproxy:" is part of what they wrap."""
    assert _layers(description) == layers


@pytest.mark.parametrize(
    "description",
    [
        "tcp:8080",
        "tcp:0:interface=127.0.0.1",
        r"tcp6:8080:interface=\:\:1",
        "unix:/run/cgiserve.sock:mode=660",
        "ssl:8443:privateKey=key.pem:certKey=cert.pem",
        "systemd:domain=INET:index=0",
        "haproxy:tcp:8080",
        "haproxy:ssl:8443:privateKey=key.pem",
        "haproxy:haproxy:unix:/run/x.sock",
    ],
)
def test_shareable(description):
    """Sockets that a worker can be handed, behind any haproxy: wrappers or none."""
    assert shareable(description)


@pytest.mark.parametrize(
    "description",
    [
        "onion:80",
        "le:/srv/certs:tcp:443",
        "stdio:",
        "haproxy:stdio:",
        "haproxy:onion:80",
        "haproxy:",
        "tcpx:8080",
        "unixsocket:/run/x.sock",
        "",
    ],
)
def test_not_shareable(description):
    """Endpoints whose socket cannot be handed to a worker, wrapped or not."""
    assert not shareable(description)


# -- helpers on the real reactor


class Collecting(Factory):
    """Records the address of each connection a port accepts, and declines it: the port closes it at once."""

    noisy = False

    def __init__(self) -> None:
        self.addresses: list = []

    def buildProtocol(self, addr):
        self.addresses.append(addr)
        return None


@pytest.fixture(scope="module", autouse=True)
def reserved_descriptor():
    """The descriptor Twisted's first listening port reserves for good (for EMFILE), closed again if these tests made it."""
    reservation = tcp._reservedFD
    reserved = reservation.available()
    yield
    if not reserved and reservation.available():
        reservation._fileDescriptor.close()
        reservation._fileDescriptor = None


@pytest.fixture
def cleanup():
    """Registers what a test opened, to close at its end; the reactor reads and writes then what it did before."""
    readers, writers = set(reactor.getReaders()), set(reactor.getWriters())
    with contextlib.ExitStack() as stack:
        yield stack.callback
    assert set(reactor.getReaders()) == readers
    assert set(reactor.getWriters()) == writers


def result(deferred):
    """The result a Deferred has already, or its failure raised."""
    results = []
    deferred.addBoth(results.append)
    [value] = results
    if isinstance(value, Failure):
        value.raiseException()
    return value


def close(port) -> None:
    """What a port's stopListening does once the reactor runs its call: stop reading, close its copy of the socket."""
    if port.connected:
        port.stopReading()
        port.connectionLost(Failure(CONNECTION_DONE))


def share(description: str, cleanup) -> SharedSocket:
    """The master's socket for C{description}, as it opens it."""
    shared = SharedSocket(description, server_endpoint(reactor, description))
    shared.privilegedStartService()
    cleanup(close, shared.port)
    return shared


def adopt(description: str, shared: SharedSocket, factory, cleanup):
    """A worker's port serving C{factory} on a copy of the master's socket, and the descriptor it was passed."""
    fd = os.dup(shared.fileno())
    port = result(inherited_endpoint(reactor, description, fd).listen(factory))
    cleanup(close, port)
    return port, fd


def connect(address, cleanup, family=socket.AF_INET) -> socket.socket:
    """A client connected to C{address}, which no one need accept: the connection waits in the backlog."""
    client = socket.socket(family, socket.SOCK_STREAM)
    cleanup(client.close)
    client.settimeout(5)
    client.connect(address)
    return client


def accept_on_copy(fd: int, cleanup) -> socket.socket:
    """A connection accepted, waiting up to 5 s, on a copy of the listening socket on C{fd}."""
    # A timeout keeps the socket, and the master's that shares its flags, non-blocking.
    with socket.socket(fileno=os.dup(fd)) as copy:
        copy.settimeout(5)
        connection, _ = copy.accept()
    cleanup(connection.close)
    return connection


def read_when_ready(port) -> None:
    """Lets the port read once its socket is ready, as the reactor would."""
    ready, _, _ = select.select([port.fileno()], [], [], 5)
    assert ready, "no connection to accept"
    port.doRead()


def wait_queued(sock: socket.socket, count: int) -> None:
    """Until the kernel holds C{count} connections for C{sock} to accept (tcpi_unacked of a listening socket)."""
    deadline = time.monotonic() + 5
    while struct.unpack_from("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 24)[0] < count:
        assert time.monotonic() < deadline, f"fewer than {count} connections queued"
        time.sleep(0.01)


# -- SharedSocket


def test_master_listens_without_reading(cleanup):
    """The master's socket listens, so that a client's connection waits in the backlog, but the reactor never reads it."""
    shared = share("tcp:0:interface=127.0.0.1", cleanup)
    port = shared.port
    assert port not in reactor.getReaders()
    assert shared.fileno() == port.fileno()
    client = connect(("127.0.0.1", port.getHost().port), cleanup)
    accepted = accept_on_copy(shared.fileno(), cleanup)
    assert accepted.getpeername() == client.getsockname()


def test_port_in_use_is_one_line(cleanup):
    """A port another socket listens on stops the master with CannotListen and its one line, listening on nothing."""
    blocker = socket.socket()
    cleanup(blocker.close)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    description = f"tcp:{blocker.getsockname()[1]}:interface=127.0.0.1"
    shared = SharedSocket(description, server_endpoint(reactor, description))
    with pytest.raises(CannotListen) as raised:
        shared.privilegedStartService()
    assert raised.value.code == f"cgiserve: cannot listen on {description}: address already in use"
    assert shared.port is None


def test_master_closing_its_copy_leaves_workers_serving(cleanup):
    """The master's copy closes without shutting the socket down: a worker still accepts on it."""
    shared = share("tcp:0:interface=127.0.0.1", cleanup)
    address = ("127.0.0.1", shared.port.getHost().port)
    factory = Collecting()
    port, _ = adopt("tcp:0", shared, factory, cleanup)
    close(shared.port)
    client = connect(address, cleanup)
    read_when_ready(port)
    assert [addr.port for addr in factory.addresses] == [client.getsockname()[1]]


# -- a worker's copy


def test_worker_port_serves_the_master_socket(cleanup):
    """The worker's port reads the master's socket with the given factory, on its own copy of the descriptor passed."""
    shared = share("tcp:0:interface=127.0.0.1", cleanup)
    factory = Collecting()
    port, fd = adopt("tcp:0", shared, factory, cleanup)
    assert isinstance(port, _InheritedTCPPort)
    assert port in reactor.getReaders()
    assert port.factory is factory
    assert port.getHost() == shared.port.getHost()
    with pytest.raises(OSError):
        os.fstat(fd)
    client = connect(("127.0.0.1", port.getHost().port), cleanup)
    read_when_ready(port)
    assert factory.addresses == [IPv4Address("TCP", *client.getsockname())]


@needs_linux
def test_worker_port_accepts_one_connection_at_a_time(cleanup):
    """numberAccepts stays 1 whatever is assigned: each time the socket is ready the worker takes one connection."""
    shared = share("tcp:0:interface=127.0.0.1", cleanup)
    factory = Collecting()
    port, _ = adopt("tcp:0", shared, factory, cleanup)
    assert port.numberAccepts == 1
    port.numberAccepts = 100
    assert port.numberAccepts == 1
    clients = [connect(("127.0.0.1", port.getHost().port), cleanup) for _ in range(3)]
    wait_queued(port.socket, 3)
    port.doRead()
    assert len(factory.addresses) == 1
    port.doRead()
    port.doRead()
    assert sorted(addr.port for addr in factory.addresses) == sorted(client.getsockname()[1] for client in clients)
    assert port.numberAccepts == 1


def test_worker_closing_its_copy_leaves_the_socket_open(cleanup):
    """A worker's port that stops closes its copy only: the master's socket still takes connections."""
    shared = share("tcp:0:interface=127.0.0.1", cleanup)
    port, _ = adopt("tcp:0", shared, Collecting(), cleanup)
    close(port)
    assert port not in reactor.getReaders()
    client = connect(("127.0.0.1", shared.port.getHost().port), cleanup)
    accepted = accept_on_copy(shared.fileno(), cleanup)
    assert accepted.getpeername() == client.getsockname()


@pytest.mark.skipif(not _has_ipv6(), reason="needs IPv6 on ::1")
def test_worker_port_on_ipv6(cleanup):
    """A tcp6: socket is adopted as IPv6: its addresses are IPv6 ones."""
    shared = share(r"tcp6:0:interface=\:\:1", cleanup)
    factory = Collecting()
    port, _ = adopt(r"tcp6:0:interface=\:\:1", shared, factory, cleanup)
    assert port.getHost() == IPv6Address("TCP", "::1", shared.port.getHost().port)
    client = connect(("::1", port.getHost().port), cleanup, socket.AF_INET6)
    read_when_ready(port)
    assert factory.addresses == [IPv6Address("TCP", "::1", client.getsockname()[1])]


def test_worker_haproxy_wraps_the_factory(cleanup):
    """haproxy:tcp: serves the factory behind Twisted's PROXY protocol wrapper."""
    shared = share("haproxy:tcp:0:interface=127.0.0.1", cleanup)
    factory = Factory.forProtocol(Protocol)
    port, _ = adopt("haproxy:tcp:0", shared, factory, cleanup)
    assert type(port.factory) is HAProxyWrappingFactory
    assert port.factory.wrappedFactory is factory
    assert port in reactor.getReaders()


def test_worker_haproxy_wrappers_nest(tmp_path, cleanup):
    """Each haproxy: wrapper of the description wraps the factory once more."""
    description = f"haproxy:haproxy:unix:{tmp_path / 'p.sock'}"
    shared = share(description, cleanup)
    factory = Factory.forProtocol(Protocol)
    port, _ = adopt(description, shared, factory, cleanup)
    assert type(port.factory) is HAProxyWrappingFactory
    assert type(port.factory.wrappedFactory) is HAProxyWrappingFactory
    assert port.factory.wrappedFactory.wrappedFactory is factory


@needs_tls
# Twisted's own TLS options hand pyOpenSSL X509 and PKey objects, which pyOpenSSL 25 and later deprecate.
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL .* objects is deprecated:DeprecationWarning")
def test_worker_serves_tls_with_the_description_certificate(tmp_path, cleanup):
    """ssl: serves the factory behind TLS, with the certificate the description names."""
    from twisted.internet.ssl import Certificate, optionsForClientTLS
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.test.iosim import connectedServerAndClient

    from tests.ops import self_signed

    key, cert = self_signed(tmp_path)
    description = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    shared = share(description, cleanup)
    factory = Factory.forProtocol(Protocol)
    port, _ = adopt(description, shared, factory, cleanup)
    assert isinstance(port, _InheritedTCPPort)
    assert port in reactor.getReaders()
    assert port.getHost() == shared.port.getHost()
    assert type(port.factory) is TLSMemoryBIOFactory
    assert port.factory.wrappedFactory is factory

    # A handshake in memory with what the port would serve a connection with.
    options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert.read_bytes()))
    client_factory = TLSMemoryBIOFactory(options, True, Factory.forProtocol(Protocol))
    peer = IPv4Address("TCP", "127.0.0.1", 50000)
    client, server, pump = connectedServerAndClient(
        lambda: port.factory.buildProtocol(peer), lambda: client_factory.buildProtocol(peer)
    )
    served = client.getPeerCertificate()
    assert served is not None
    assert Certificate(served) == Certificate.loadPEM(cert.read_bytes())


def test_unix_worker_leaves_the_path_to_the_master(tmp_path, cleanup):
    """A worker's unix: port neither chmods nor removes the socket's path: the master made it, and removes it."""
    path = tmp_path / "s.sock"
    description = f"unix:{path}:mode=640"
    shared = share(description, cleanup)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    factory = Collecting()
    port, _ = adopt(description, shared, factory, cleanup)
    assert isinstance(port, _InheritedUNIXPort)
    assert port in reactor.getReaders()
    assert port.numberAccepts == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    connect(str(path), cleanup, socket.AF_UNIX)
    read_when_ready(port)
    assert len(factory.addresses) == 1

    close(port)
    assert port not in reactor.getReaders()
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o640
    assert os.path.islink(f"{path}.lock")
    client = connect(str(path), cleanup, socket.AF_UNIX)
    accepted = accept_on_copy(shared.fileno(), cleanup)
    assert accepted.getsockname() == client.getpeername() == str(path)

    close(shared.port)
    assert not os.path.lexists(path)
    assert not os.path.lexists(f"{path}.lock")


def test_unix_worker_reserves_a_descriptor_for_emfile(tmp_path):
    """A worker serving only a unix: socket keeps Twisted's spare descriptor, to refuse a connection when out of them."""
    code = (
        "import os, socket\n"
        "from twisted.internet import reactor, tcp\n"
        "from twisted.internet.protocol import Factory\n"
        "from cgiserve.sockets import inherited_endpoint\n"
        "s = socket.socket(socket.AF_UNIX); s.setblocking(False)\n"
        f"s.bind({str(tmp_path / 's')!r}); s.listen()\n"
        "inherited_endpoint(reactor, 'unix:x', os.dup(s.fileno())).listen(Factory())\n"
        "assert tcp._reservedFD.available()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CHECKOUT, timeout=60)


@pytest.mark.parametrize("description", ["TCP:8080", "Haproxy:tcp:8080", "HAPROXY:SSL:443"])
def test_endpoint_types_in_any_case_are_shareable(description):
    """As Twisted matches endpoint types in any case, so does --workers."""
    assert shareable(description)
