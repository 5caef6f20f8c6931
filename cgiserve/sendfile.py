# -*- test-case-name: tests.test_sendfile,tests.test_e2e_sendfile -*-
"""
X-Sendfile: a script answers with C{X-Sendfile: /path} and the server
sends that file itself, as it sends static files, if it lies under a
C{--sendfile-dir}; as lighttpd's C{cgi.x-sendfile} and nginx's
C{X-Accel-Redirect} do.
"""

from __future__ import annotations

import os
import stat

from twisted.web import server, static

HEADER = b"x-sendfile"


class Refused(Exception):
    """The header names no file the server may send: C{status} (502 or 404) and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _within(path: str, directories, outside: str, dotfile: str) -> None:
    """Refuse C{path} unless it lies (strictly) under one of C{directories}, and not in a dotfile or dot-directory."""
    for directory in directories:
        if path.startswith(directory + os.sep):
            if any(segment.startswith(".") for segment in path[len(directory) + 1 :].split(os.sep)):
                raise Refused(502, dotfile)
            return
    raise Refused(502, outside)


def target(value: bytes, directories) -> str:
    """
    The real path of the file an X-Sendfile header names, if it is a
    regular file under one of C{directories} (real paths) both as named
    and once its symlinks are resolved, and neither way a dotfile or in a
    dot-directory; else L{Refused}.
    """
    path = os.fsdecode(value.strip())
    if not os.path.isabs(path):
        raise Refused(502, "not an absolute path")
    named = os.path.normpath(path)
    _within(named, directories, "outside every --sendfile-dir", "a dotfile")
    real = os.path.realpath(named)
    _within(real, directories, "a symlink out of every --sendfile-dir", "a symlink to a dotfile")
    try:
        mode = os.stat(real).st_mode
    except OSError:
        raise Refused(404, "no such file") from None
    if not stat.S_ISREG(mode):
        raise Refused(502, "not a regular file")
    return real


def send(request, path: str, content_type: bytes | None) -> None:
    """
    Send the file at C{path} as the response, the script's status and
    headers already set: with status 200, as a static file (ranges,
    conditional requests, HEAD); with another, whole. The type is the
    script's, else guessed from the name; never a content encoding.
    """
    resource = static.File(path)
    if content_type:
        resource.type = content_type.decode("latin-1")
    else:
        resource.type = static.getTypeAndEncoding(
            resource.basename(), resource.contentTypes, resource.contentEncodings, resource.defaultType
        )[0]
    resource.encoding = None
    if request.code == 200:
        body = resource.render_GET(request)
        if body is not server.NOT_DONE_YET:
            request.write(body)
            request.finish()
        return
    try:
        opened = resource.openForReading()
    except OSError:
        body = resource.childNotFound.render(request)
        request.write(body)
        request.finish()
        return
    request.setHeader(b"content-length", b"%d" % resource.getFileSize())
    request.setHeader(b"content-type", resource.type.encode("latin-1"))
    if request.method == b"HEAD":
        opened.close()
        request.finish()
        return
    static.NoRangeStaticProducer(request, opened).start()
