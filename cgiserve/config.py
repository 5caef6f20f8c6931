# -*- test-case-name: tests.test_tap -*-
"""The operator's choices, as one plain value handed down the resource tree."""

from __future__ import annotations

from dataclasses import dataclass, field

from cgiserve import __version__
from cgiserve.environ import EnvironSettings

SERVER_SOFTWARE = f"cgiserve/{__version__}"

DEFAULT_INDEX_NAMES = ("index.html", "index.htm")


@dataclass(frozen=True)
class ServerConfig:
    """
    Everything that decides how a request is served.

    C{root} is the document root's real path; C{hidden} holds real paths
    the server writes itself (pid and log files), never to be served;
    C{interpreters} maps a file extension to the absolute path of the
    program that runs such files.
    """

    root: str
    environ: EnvironSettings = field(default_factory=lambda: EnvironSettings(SERVER_SOFTWARE))
    index_names: tuple[str, ...] = DEFAULT_INDEX_NAMES
    listing: bool = True
    form_argv: bool = True
    isindex_argv: bool = False
    interpreters: dict[str, str] = field(default_factory=dict)
    hidden: frozenset[str] = frozenset()
