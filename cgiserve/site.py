# -*- test-case-name: tests.test_site -*-
"""The HTTP site: request ids, our Server header, and normalised paths before the tree is walked."""

from __future__ import annotations

import uuid

from twisted.logger import Logger
from twisted.web import pages, server

from cgiserve.config import SERVER_SOFTWARE
from cgiserve.paths import BadPath, path_segments

_SERVER = SERVER_SOFTWARE.encode("ascii")


class Request(server.Request):
    """
    A request with an id that follows it into the logs, the script's
    environment (REQUEST_ID) and the response (X-Request-Id).
    """

    request_id = ""
    local_redirects = 0

    def process(self):
        self.request_id = uuid.uuid4().hex
        super().process()


class Site(server.Site):
    """
    A site whose paths are decoded and stripped of dot-segments before the
    resource tree sees them, so that no resource has to defend itself
    against C{..}, encoded slashes or NULs.
    """

    requestFactory = Request
    _log = Logger()

    def getResourceFor(self, request):
        # Request.process has just set Twisted's own Server header.
        request.setHeader(b"Server", _SERVER)
        request.setHeader(b"X-Request-Id", request.request_id.encode("ascii"))
        try:
            request.postpath = path_segments(request.path)
        except BadPath as e:
            self._log.info(
                "[{request_id}] 400 for {path!r}: {reason}",
                request_id=request.request_id,
                path=request.path,
                reason=str(e),
            )
            request.site = self
            return pages.errorPage(400, "Bad Request", "The request path is not valid.")
        request.prepath = []
        return super().getResourceFor(request)
