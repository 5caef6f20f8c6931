# -*- test-case-name: tests.test_paths -*-
"""Pure: a request's raw path -> the decoded, normalised segments the resource tree walks."""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_to_bytes

# RFC 9112 3.2.2: a server must accept the absolute form of a request target.
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://(?P<authority>[^/]*)")


class BadPath(ValueError):
    """The path cannot name anything under the document root; the message says why."""


def split_target(raw_path: bytes) -> tuple[bytes | None, bytes]:
    """
    A request target's authority (None unless it is in absolute form,
    C{http://host:port/path}) and its path.

    An absolute form without a host, or with userinfo (which RFC 9110
    4.2.4 deprecates), raises L{BadPath}.
    """
    absolute = _ABSOLUTE_FORM.match(raw_path)
    if absolute is None:
        return None, raw_path
    authority = absolute.group("authority")
    if not authority or b"@" in authority:
        raise BadPath(f"absolute target without a host, or with userinfo: {raw_path[:80]!r}")
    return authority, raw_path[absolute.end() :] or b"/"


def path_segments(raw_path: bytes) -> list[bytes]:
    """
    Decode a request path and remove its dot-segments (RFC 3986 5.2.4).

    Each segment is percent-decoded first, so C{%2e%2e} is C{..} like the
    plain form; empty segments (C{//}) fold away; a path ending in a
    directory keeps a trailing empty segment, as Twisted's tree expects.
    A path that climbs above the root, or whose segment decodes to a slash,
    backslash or NUL, raises L{BadPath}.
    """
    return list(_segments(split_target(raw_path)[1]))


# Most requests are for a few paths; the cache is kept small, as each entry
# may be as long as a request line.
@functools.lru_cache(maxsize=256)
def _segments(path: bytes) -> tuple[bytes, ...]:
    """L{path_segments} of a path without its authority, as a tuple: the cached value is never changed."""
    if not path.startswith(b"/"):
        raise BadPath(f"path does not start with '/': {path[:80]!r}")
    segments: list[bytes] = []
    directory = False
    for raw in path[1:].split(b"/"):
        segment = unquote_to_bytes(raw)
        if b"/" in segment or b"\\" in segment or b"\0" in segment:
            raise BadPath(f"path segment holds a slash, backslash or NUL: {raw[:80]!r}")
        directory = segment in (b"", b".", b"..")
        if segment == b"..":
            if not segments:
                raise BadPath("path climbs above the document root")
            segments.pop()
        elif segment not in (b"", b"."):
            segments.append(segment)
    if directory or not segments:
        segments.append(b"")
    return tuple(segments)
