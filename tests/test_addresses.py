"""The CGI variables for a connection's two ends, as a table over every kind of Twisted address."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from cgiserve.addresses import Ends, client_end, connection_ends

V4_CLIENT = IPv4Address("TCP", "192.0.2.7", 50123)
V4 = ("192.0.2.7", 50123, "127.0.0.1", 8080)
V6 = ("2001:db8::7", 50123, "::1", 8443)
UNIX = ("unix:", None, "unix:/run/cgiserve.sock")
V4_SERVER = IPv4Address("TCP", "127.0.0.1", 8080)
V6_CLIENT = IPv6Address("TCP", "2001:db8::7", 50123)
V6_SERVER = IPv6Address("TCP", "::1", 8443)
UNIX_CLIENT = UNIXAddress(None)
UNIX_SERVER = UNIXAddress(b"/run/cgiserve.sock")


@pytest.mark.parametrize(
    "client, server, host, secure, expected",
    [
        (V4_CLIENT, V4_SERVER, b"example.test:8080", False, Ends(*V4, "example.test")),
        (V4_CLIENT, V4_SERVER, b"example.test", False, Ends(*V4, "example.test")),
        (V4_CLIENT, V4_SERVER, None, False, Ends(*V4, "127.0.0.1")),
        (V4_CLIENT, V4_SERVER, b"bad host:port", False, Ends(*V4, "127.0.0.1")),
        (V6_CLIENT, V6_SERVER, b"[::1]:8443", True, Ends(*V6, "[::1]")),
        (V6_CLIENT, V6_SERVER, None, True, Ends(*V6, "[::1]")),
        (UNIX_CLIENT, UNIX_SERVER, b"example.test:8080", False, Ends(*UNIX, 8080, "example.test")),
        (UNIX_CLIENT, UNIX_SERVER, b"example.test", False, Ends(*UNIX, 80, "example.test")),
        (UNIX_CLIENT, UNIX_SERVER, b"example.test", True, Ends(*UNIX, 443, "example.test")),
        (UNIX_CLIENT, UNIX_SERVER, None, False, Ends(*UNIX, 80, "localhost")),
        (UNIX_CLIENT, UNIX_SERVER, b"[::1]:81", False, Ends(*UNIX, 81, "[::1]")),
        # Host names are case-insensitive: SERVER_NAME is lower case.
        (V4_CLIENT, V4_SERVER, b"Example.TEST:8080", False, Ends(*V4, "example.test")),
        (V6_CLIENT, V6_SERVER, b"[2001:DB8::1]", True, Ends(*V6, "[2001:db8::1]")),
        (UNIX_CLIENT, UNIX_SERVER, b"WWW.Example.Test", False, Ends(*UNIX, 80, "www.example.test")),
    ],
)
def test_connection_ends(client, server, host, secure, expected):
    """Each kind of connection gives sensible REMOTE_*, SERVER_* variables, with or without a Host header."""
    assert connection_ends(client, server, host, secure) == expected


@pytest.mark.parametrize(
    "client, expected",
    [
        (V4_CLIENT, ("192.0.2.7", 50123)),
        (V6_CLIENT, ("2001:db8::7", 50123)),
        (UNIX_CLIENT, ("unix:", None)),
        (None, ("", None)),
    ],
)
def test_client_end(client, expected):
    """A client is its address and port; a unix-socket client is 'unix:' without a port; no address is empty."""
    assert client_end(client) == expected
