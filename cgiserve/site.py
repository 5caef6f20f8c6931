# -*- test-case-name: tests.test_e2e_limits -*-
"""The HTTP side: request ids, body limits and streaming, header deadlines, and normalised paths."""

from __future__ import annotations

import itertools
import os
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.web import http, pages, server

from cgiserve.config import SERVER_SOFTWARE, ServerConfig
from cgiserve.paths import BadPath, path_segments, split_target
from cgiserve.upload import StreamedBody

_SERVER = SERVER_SOFTWARE.encode("ascii")

# Request ids: 32 hex digits like a UUID, unique across restarts by a
# random prefix per process and within one by a counter, without a
# system call per request.
_ID_PREFIX = os.urandom(10).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A fresh request id."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"

_TOO_LARGE = (
    b"HTTP/1.1 413 Content Too Large\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 31\r\n"
    b"\r\n"
    b"The request body is too large.\n"
)


class Request(server.Request):
    """
    A request with an id that follows it into the logs, the script's
    environment (REQUEST_ID) and the response (X-Request-Id).

    A body over the site's C{max_body} is refused with 413 as soon as that
    is known: from Content-Length before any of it is read, or when a
    chunked body crosses the limit. A body with a Content-Length bound for
    a script is not stored: the script starts when the headers are in and
    reads the body as it arrives (C{streamed_body}).
    """

    _log = Logger()
    # Scripts parse their own forms; parsing every POST body into
    # request.args would only cost the server time and memory.
    _parsePOSTFormSubmission = False
    request_id = ""
    local_redirects = 0
    streamed_body: StreamedBody | None = None
    rejected = False
    # Bytes of the request body received so far (for the access log).
    body_received = 0
    # Who --htpasswd let in (REMOTE_USER), or None.
    remote_user: str | None = None
    # The ScriptProtocol that answers it, if a script does.
    script_run = None
    # The access log's bookkeeping: when it began timing, whether it is logged.
    access_started: float | None = None
    access_logged = False

    def process(self):
        if not self.request_id:
            self.request_id = new_request_id()
        super().process()

    def gotLength(self, length):
        max_body = self.channel.site.config.max_body
        if length is not None and max_body and length > max_body:
            self._reject(f"Content-Length {length} is over the limit of {max_body} bytes")
            return
        if length and isinstance(self.channel, http.HTTPChannel) and self._stream(length):
            return
        super().gotLength(length)

    def _stream(self, length: int) -> bool:
        """Start a script before its body arrives, when the request is for one that can take it so."""
        channel = self.channel
        self._set_request_line(channel._command, channel._path, channel._version)
        try:
            path_segments(self.path)
        except BadPath:
            return False  # answered (and logged) once the body is in
        self.request_id = new_request_id()
        target = channel.site.getResourceFor(self)
        if not getattr(target, "streams_body", lambda request: False)(self):
            return False
        self.streamed_body = StreamedBody(channel.transport, length)
        # The connection's idle timer is for clients, not for an upload the
        # server itself holds back; the channel restores it after the response.
        if channel.timeOut:
            channel._savedTimeOut = channel.setTimeout(None)
        super().gotLength(0)
        self.process()
        if self.startedWriting:
            # Answered already (queue full, say): no "100 Continue" after that.
            self.requestHeaders.removeHeader(b"expect")
        return True

    def handleContentChunk(self, data):
        if self.rejected:
            return
        self.body_received += len(data)
        if self.streamed_body is not None:
            self.streamed_body.write(data)
            return
        max_body = self.channel.site.config.max_body
        if max_body and self.body_received > max_body:
            self._reject(f"chunked body is over the limit of {max_body} bytes")
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self.rejected:
            return
        if self.streamed_body is not None:
            self.streamed_body.finish()
            return
        super().requestReceived(command, path, version)

    def _set_request_line(self, command, path, version):
        """What C{requestReceived} would set, for a request whose body is still to come."""
        self.method, self.uri, self.clientproto = command, path, version
        self.path, _, query = path.partition(b"?")
        self.args = parse_qs(query, keep_blank_values=True)

    def _reject(self, reason: str) -> None:
        """Refuse the body with 413 and close the connection, without reading on."""
        self.rejected = True
        channel = self.channel
        if isinstance(channel, http.HTTPChannel):
            self._set_request_line(channel._command, channel._path, channel._version)
        self.request_id = self.request_id or new_request_id()
        self._log.info("[{request_id}] 413: {reason}", request_id=self.request_id, reason=reason)
        self.requestHeaders.removeHeader(b"expect")
        self.setResponseCode(413)
        if not isinstance(channel, http.HTTPChannel):
            self.write(pages.errorPage(413, "Content Too Large", "The request body is too large.").render(self))
            self.finish()
            return
        # The channel is still parsing this request's body: answer on the
        # wire directly and leave its state alone until the connection goes.
        channel.site.log(self)
        channel.transport.write(_TOO_LARGE)
        channel.transport.loseConnection()


class Channel(http.HTTPChannel):
    """
    An HTTP/1.1 connection with a deadline for each request's headers, so
    that a client trickling them in cannot hold a connection (the idle
    timeout restarts with every byte).
    """

    _log = Logger()
    _header_call = None
    _awaiting_headers = True
    _host = None

    def getHost(self):
        # Asked once per script run; a connection's own address never changes.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def dataReceived(self, data):
        super().dataReceived(data)
        # Most requests arrive whole in one read: the deadline is only
        # needed for those whose headers are still incomplete after it.
        if self._awaiting_headers and self._header_call is None and self.transport is not None:
            self._header_call = self.callLater(self.site.config.header_timeout, self._headers_too_slow)

    def allHeadersReceived(self):
        self._cancel_header_deadline()
        self._awaiting_headers = False
        super().allHeadersReceived()

    def requestDone(self, request):
        self._awaiting_headers = True
        super().requestDone(request)

    def connectionLost(self, reason):
        self._cancel_header_deadline()
        super().connectionLost(reason)

    def _cancel_header_deadline(self):
        if self._header_call is not None:
            if self._header_call.active():
                self._header_call.cancel()
            self._header_call = None

    def _headers_too_slow(self):
        self._header_call = None
        self._log.info("Request headers too slow from {peer}; closing", peer=str(self.transport.getPeer()))
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.transport.loseConnection()


def _channel(factory):
    """An HTTP/1.1 L{Channel} behind Twisted's switch to HTTP/2 after ALPN."""
    return http._GenericHTTPChannelProtocol(Channel())


class Site(server.Site):
    """
    The site: paths are decoded and stripped of dot-segments before the
    resource tree sees them, so that no resource has to defend itself
    against C{..}, encoded slashes or NULs.
    """

    requestFactory = Request
    protocol = _channel
    _log = Logger()
    # An AccessLog (--access-log), or None for none: like lighttpd's, the
    # access log is opt-in; formatting a line per request through
    # twisted.logger would cost a fifth of a static request's time.
    access_log = None

    def __init__(self, resource, config: ServerConfig, reactor=None):
        super().__init__(resource, timeout=config.idle_timeout, reactor=reactor)
        self.config = config

    def log(self, request):
        if self.access_log is not None:
            self.access_log.request_ended(request)

    def getResourceFor(self, request):
        if self.access_log is not None:
            self.access_log.watch(request)
        # Request.process has just set Twisted's own Server header.
        request.setHeader(b"Server", _SERVER)
        request.setHeader(b"X-Request-Id", request.request_id.encode("ascii"))
        try:
            authority, request.path = split_target(request.path)
            if authority is not None:
                # RFC 9112 3.2.2: the target's host, not the Host header, names the server.
                request.requestHeaders.setRawHeaders(b"host", [authority])
            request.postpath = path_segments(request.path)
        except BadPath as e:
            self._log.info(
                "[{request_id}] 400 for {path!r}: {reason}", request_id=request.request_id, path=request.path, reason=str(e)
            )
            request.site = self
            return pages.errorPage(400, "Bad Request", "The request path is not valid.")
        request.prepath = []
        return super().getResourceFor(request)
