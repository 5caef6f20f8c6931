# -*- test-case-name: tests.test_e2e_ops -*-
"""One warning at startup when the server, and so every script, runs as root."""

from __future__ import annotations

import os

from twisted.application import service
from twisted.logger import Logger


class RootWarning(service.Service):
    """
    Warns once if the server runs as root when it starts serving.

    twistd binds the ports as root and then switches to its --uid and
    --gid before it starts the services, so C{startService} sees the user
    that every script will run as.
    """

    _log = Logger()

    def __init__(self, geteuid=os.geteuid) -> None:
        self.geteuid = geteuid

    def startService(self) -> None:
        super().startService()
        if self.geteuid() == 0:
            self._log.warn(
                "Running as root: every script runs as root too. "
                "Give twistd --uid and --gid (before 'cgiserve') to run as an unprivileged user."
            )
