# -*- test-case-name: tests.test_listen,tests.test_e2e_listen -*-
"""Listening on the --listen endpoints, or one line saying why the server cannot."""

from __future__ import annotations

import os

from twisted.application import internet
from twisted.internet import endpoints, error
from twisted.python import usage

# Endpoint parsers only keep the reactor they are given; a stand-in spares
# the server the 2.4 MiB that importing twisted.internet.testing for a
# MemoryReactor would add to its resident memory for good.
_PARSE_ONLY = object()


class CannotListen(SystemExit, Exception):
    """
    The server cannot listen on an endpoint: twistd stops with one line and status 1.

    A SystemExit, because Python then prints only its message (to
    C{sys.stderr}, which twistd has made its log) and no traceback. An
    Exception too, because around starting the services twistd catches only
    Exception to remove its pid file and to tell a daemon's waiting parent
    why: past a bare SystemExit the pid file stays and the parent waits for good.
    """

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(f"cgiserve: cannot listen on {description}: {reason}")


def reason(failure: Exception) -> str:
    """
    Why an endpoint cannot listen, short and lower-case.

    An OSError (also inside a CannotListenError) gives its C{strerror},
    after the file it concerns if any: C{address already in use},
    C{/etc/x.pem: no such file or directory}. Anything else, such as an
    OpenSSL error, gives its C{str}.
    """
    if isinstance(failure, error.CannotListenError):
        failure = failure.socketError
    if isinstance(failure, OSError) and failure.strerror:
        text = failure.strerror.lower()
        # A symlink's error names the link second: unix: endpoints lock
        # with a symlink from the pid to C{PATH.lock}.
        filename = failure.filename2 or failure.filename
        return f"{os.fsdecode(filename)}: {text}" if filename else text
    return str(failure)


def server_endpoint(reactor, description: str, option: str = "--listen"):
    """
    The endpoint a --listen (or C{option}) description names.

    A description Twisted cannot parse is a UsageError; one naming a file
    that cannot be read, or a systemd socket that was not passed, is
    L{CannotListen}.
    """
    try:
        return endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError) as e:  # an unknown endpoint type or option, a bad number
        raise usage.UsageError(f"{option} {description}: {e}") from None
    except IndexError:
        # systemd:...:index=N, with fewer sockets passed (LISTEN_FDS), as when not started by systemd.
        raise CannotListen(description, "systemd passed no such socket") from None
    except Exception as e:  # the parsers raise what their libraries raise: OSError, OpenSSL errors...
        raise CannotListen(description, reason(e)) from None


def check_endpoint(description: str, option: str = "--listen") -> None:
    """Refuse, before twistd starts, a --listen description that does not parse (UsageError) or could never listen."""
    endpoint = server_endpoint(_PARSE_ONLY, description, option)
    # haproxy: and similar wrappers keep the real endpoint inside.
    endpoint = getattr(endpoint, "_wrappedEndpoint", endpoint)
    port = getattr(endpoint, "_port", 0)
    if not 0 <= port <= 65535:
        raise CannotListen(description, f"port {port} is not between 0 and 65535")


class ListeningService(internet.StreamServerEndpointService):
    """
    Listens on one --listen endpoint, or stops twistd with L{CannotListen}.

    Built as C{strports.service} builds its service, listening as soon as
    twistd starts the services (still as root, for a privileged port), so
    that a port in use or not allowed stops the server there.
    """

    # As strports.service sets it: a failure to listen raises from privilegedStartService.
    _raiseSynchronously = True

    def __init__(self, description: str, endpoint, factory) -> None:
        super().__init__(endpoint, factory)
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            raise CannotListen(self.description, reason(e)) from None
