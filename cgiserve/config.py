# -*- test-case-name: tests.test_tap -*-
"""The operator's choices, as one plain value handed down the resource tree."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cgiserve import __version__
from cgiserve.environ import EnvironSettings
from cgiserve.limits import Limits

SERVER_SOFTWARE = f"cgiserve/{__version__}"

DEFAULT_INDEX_NAMES = ("index.html", "index.htm")

MiB = 1024 * 1024

DEFAULT_KILL_GRACE_SECONDS = 5.0

# Like Apache's and nginx's error logs: enough stderr to diagnose a
# script, not enough for one script to fill the server's log or memory.
DEFAULT_MAX_STDERR_BYTES = 64 * 1024


# The access log's formats, and the path that means the standard output.
ACCESS_LOG_COMBINED = "combined"
ACCESS_LOG_JSON = "json"
ACCESS_LOG_FORMATS = (ACCESS_LOG_COMBINED, ACCESS_LOG_JSON)
ACCESS_LOG_STDOUT = "-"


def default_max_scripts() -> int:
    """Eight running scripts per CPU core: enough to keep the cores busy while others wait on I/O."""
    return 8 * (os.cpu_count() or 1)


@dataclass(frozen=True)
class ServerConfig:
    """
    Everything that decides how a request is served.

    C{root} is the document root's real path; C{hidden} holds real paths
    the server writes itself (pid and log files), never to be served;
    C{interpreters} maps a file extension to the absolute path of the
    program that runs such files; C{cgi_dirs}, when not empty, holds the
    real paths of the only directories whose files run as scripts;
    C{sendfile_dirs} the real paths of those whose files a script may name
    in an X-Sendfile header; C{limits} the resource limits every script
    starts under.
    """

    root: str
    environ: EnvironSettings = field(default_factory=lambda: EnvironSettings(SERVER_SOFTWARE))
    index_names: tuple[str, ...] = DEFAULT_INDEX_NAMES
    listing: bool = True
    form_argv: bool = True
    isindex_argv: bool = False
    interpreters: dict[str, str] = field(default_factory=dict)
    hidden: frozenset[str] = frozenset()
    # Apache kills a CGI script after 60 s (its Timeout); so do we.
    timeout: float = 60.0
    kill_grace: float = DEFAULT_KILL_GRACE_SECONDS
    max_scripts: int = field(default_factory=default_max_scripts)
    max_queue: int = 128
    queue_timeout: float = 30.0
    max_body: int = 100 * MiB
    max_stderr: int = DEFAULT_MAX_STDERR_BYTES
    idle_timeout: float = 60.0
    # Apache's RequestReadTimeout gives headers 20 s to start arriving.
    header_timeout: float = 20.0
    shutdown_grace: float = 10.0
    cgi_dirs: tuple[str, ...] = ()
    sendfile_dirs: tuple[str, ...] = ()
    limits: Limits = Limits()

    def may_run(self, path: str) -> bool:
        """Whether the file at this real path may run as a script (--cgi-dir, like Apache's ScriptAlias)."""
        return not self.cgi_dirs or any(path.startswith(directory + os.sep) for directory in self.cgi_dirs)
