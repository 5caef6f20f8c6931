# -*- test-case-name: tests.test_addresses -*-
"""Pure: the two ends of a connection, as Twisted gives them -> what CGI calls them (RFC 3875 4.1)."""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

# A unix socket has no network address. Like nginx's $remote_addr, a client
# on one is "unix:"; the server's end is "unix:" and the socket's path.
UNIX_ADDR = "unix:"

# The server's name when a request over a unix socket has no Host header.
UNIX_SERVER_NAME = "localhost"

_DEFAULT_PORTS = {False: 80, True: 443}

# RFC 9110 7.2: Host = uri-host [ ":" port ]; an IPv6 literal keeps its brackets.
_HOST_HEADER = re.compile(rb"(?P<name>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(?P<port>[0-9]{1,5}))?")


# Made once per script request; not frozen, for the same reason as RequestFacts.
@dataclass(slots=True)
class Ends:
    """The CGI variables for the two ends of a request's connection."""

    remote_addr: str
    remote_port: int | None
    server_addr: str
    server_port: int | None
    server_name: str


def client_end(client) -> tuple[str, int | None]:
    """REMOTE_ADDR and REMOTE_PORT for a client's Twisted address (no port on a unix socket)."""
    if isinstance(client, (IPv4Address, IPv6Address)):
        return client.host, client.port
    return (UNIX_ADDR if isinstance(client, UNIXAddress) else ""), None


# Clients send the same few Host headers over and over; the cache is kept
# small, as each entry may be as long as a request head.
@functools.lru_cache(maxsize=128)
def _host_header(value: bytes) -> tuple[str | None, bytes | None]:
    """A Host header's name, in lower case, and port; (None, None) if it is malformed."""
    match = _HOST_HEADER.fullmatch(value)
    if match is None:
        return None, None
    # Host names are case-insensitive (RFC 9110 4.2.3); Apache lowers them too.
    return os.fsdecode(match.group("name")).lower(), match.group("port")


def connection_ends(client, server, host_header: bytes | None, secure: bool) -> Ends:
    """
    REMOTE_ADDR, REMOTE_PORT, SERVER_ADDR, SERVER_PORT and SERVER_NAME for
    a request that came from C{client} to C{server} (Twisted addresses).

    Over TCP (IPv4 or IPv6, or the PROXY protocol, whose addresses are the
    ones HAProxy reports) these are the addresses and ports, and
    SERVER_NAME is the Host header's name, else the address the client
    connected to (an IPv6 one in brackets, RFC 3875 4.1.14), in lower
    case. Over a unix
    socket, which has no ports, SERVER_PORT is the Host header's port, else
    the scheme's default, so that scripts can still build their own URLs.
    """
    name, port = _host_header(host_header) if host_header is not None else (None, None)
    remote_addr, remote_port = client_end(client)
    if isinstance(server, (IPv4Address, IPv6Address)):
        literal = f"[{server.host}]" if ":" in server.host else server.host
        return Ends(remote_addr, remote_port, server.host, server.port, name or literal)
    server_addr = UNIX_ADDR + os.fsdecode(server.name or b"") if isinstance(server, UNIXAddress) else ""
    server_port = int(port) if port else _DEFAULT_PORTS[secure]
    return Ends(remote_addr, remote_port, server_addr, server_port, name or UNIX_SERVER_NAME)
