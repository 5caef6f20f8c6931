"""Listening on --listen endpoints: the reason a listen failed, the endpoint checks, the listening service."""

from __future__ import annotations

import errno
import importlib.util
import os

import pytest
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor, RaisingMemoryReactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cgiserve.listen import CannotListen, ListeningService, check_endpoint, reason, server_endpoint


needs_tls = pytest.mark.skipif(importlib.util.find_spec("OpenSSL") is None, reason="needs the tls extra")


def _os_error(code: int, *filenames) -> OSError:
    return OSError(code, os.strerror(code), *filenames)


class _OpenSSLError(Exception):
    """Like OpenSSL.crypto.Error, which holds a list of (library, function, reason)."""


# -- reason


@pytest.mark.parametrize(
    "failure, expected",
    [
        (CannotListenError("127.0.0.1", 8000, _os_error(errno.EADDRINUSE)), "address already in use"),
        (CannotListenError("127.0.0.1", 81, _os_error(errno.EACCES)), "permission denied"),
        (CannotListenError("10.255.255.1", 0, _os_error(errno.EADDRNOTAVAIL)), "cannot assign requested address"),
        (_os_error(errno.ENOENT, "/etc/x.pem"), "/etc/x.pem: no such file or directory"),
        (_os_error(errno.EACCES, "/etc/x.pem"), "/etc/x.pem: permission denied"),
        # The unix: lock: symlink("1234", b"/run/x.sock.lock").
        (_os_error(errno.ENOENT, "1234", None, b"/run/x.sock.lock"), "/run/x.sock.lock: no such file or directory"),
        (CannotListenError(None, b"/run/x.sock", "Cannot acquire lock"), "Cannot acquire lock"),
        (OSError("no errno here"), "no errno here"),
        (OverflowError("bind(): port must be 0-65535."), "bind(): port must be 0-65535."),
        (_OpenSSLError([("PEM routines", "", "no start line")]), "[('PEM routines', '', 'no start line')]"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_reason(failure, expected):
    """An OSError gives its strerror lower-cased, after the file it concerns; anything else its str."""
    assert reason(failure) == expected


def test_cannot_listen_exits_with_its_line():
    """CannotListen is a SystemExit whose code is the one line, and an Exception for twistd to clean up after."""
    exit = CannotListen("tcp:8000", "address already in use")
    assert isinstance(exit, SystemExit) and isinstance(exit, Exception)
    assert exit.code == str(exit) == "cgiserve: cannot listen on tcp:8000: address already in use"


# -- check_endpoint


@pytest.mark.parametrize(
    "description, expected",
    [
        ("tcp:99999", "port 99999 is not between 0 and 65535"),
        ("tcp:-1:interface=127.0.0.1", "port -1 is not between 0 and 65535"),
        ("haproxy:tcp:70000", "port 70000 is not between 0 and 65535"),
        pytest.param(
            "ssl:0:privateKey=/nonexistent/key.pem", "/nonexistent/key.pem: no such file or directory", marks=needs_tls
        ),
        ("systemd:domain=INET:index=0", "systemd passed no such socket"),
    ],
)
def test_check_endpoint_cannot_listen(monkeypatch, description, expected):
    """An endpoint that could never listen raises SystemExit with the one line naming it and why."""
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as raised:
        check_endpoint(description)
    assert raised.value.code == f"cgiserve: cannot listen on {description}: {expected}"


@pytest.mark.parametrize(
    "description, expected",
    [
        ("bogus:1", "Unknown endpoint type: 'bogus'"),
        ("", "Unknown endpoint type: ''"),
        ("tcp:notaport", "invalid literal for int() with base 10: 'notaport'"),
        ("tcp:80:nosuchoption=1", "_parseTCP() got an unexpected keyword argument 'nosuchoption'"),
        ("systemd:domain=INET:index=x", "invalid literal for int() with base 10: 'x'"),
    ],
)
def test_check_endpoint_usage_error(description, expected):
    """A description Twisted cannot parse is a mistake on the command line: a UsageError naming it."""
    with pytest.raises(usage.UsageError) as raised:
        check_endpoint(description)
    assert str(raised.value) == f"--listen {description}: {expected}"


@pytest.mark.parametrize(
    "description", ["tcp:0:interface=127.0.0.1", "tcp:65535", "tcp6:8080", "unix:/run/cgiserve.sock", "haproxy:tcp:8080"]
)
def test_check_endpoint_accepts(description):
    """A description that may listen passes."""
    check_endpoint(description)


# -- ListeningService


class ListeningServiceTests(SynchronousTestCase):
    def test_listens_when_privileged_start(self):
        """privilegedStartService listens on the endpoint, with the factory, before the reactor runs."""
        reactor, factory = MemoryReactor(), Factory()
        description = "tcp:8123:interface=127.0.0.1"
        listening = ListeningService(description, server_endpoint(reactor, description), factory)
        listening.privilegedStartService()
        [(port, listened, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (8123, "127.0.0.1"))
        self.assertIs(listened, factory)

    def test_failure_to_listen_is_one_line(self):
        """A port in use stops startup with CannotListen naming the description and the reason."""
        failure = CannotListenError("127.0.0.1", 8123, _os_error(errno.EADDRINUSE))
        description = "tcp:8123:interface=127.0.0.1"
        endpoint = server_endpoint(RaisingMemoryReactor(failure), description)
        listening = ListeningService(description, endpoint, Factory())
        with self.assertRaises(CannotListen) as raised:
            listening.privilegedStartService()
        self.assertEqual(
            raised.exception.code, "cgiserve: cannot listen on tcp:8123:interface=127.0.0.1: address already in use"
        )

    @needs_tls
    def test_missing_certificate_is_one_line(self):
        """A missing certificate file stops the endpoint's construction with CannotListen."""
        with self.assertRaises(CannotListen) as raised:
            server_endpoint(MemoryReactor(), "ssl:0:privateKey=/nonexistent/key.pem")
        self.assertEqual(
            raised.exception.code,
            "cgiserve: cannot listen on ssl:0:privateKey=/nonexistent/key.pem:"
            " /nonexistent/key.pem: no such file or directory",
        )
