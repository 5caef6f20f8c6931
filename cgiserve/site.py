# -*- test-case-name: tests.test_e2e_limits -*-
"""The HTTP side: request ids, body limits and streaming, header deadlines, and normalised paths."""

from __future__ import annotations

import itertools
import os
import time
from urllib.parse import parse_qs

from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.python import failure
from twisted.web import http, pages, resource, server
from twisted.web.http_headers import Headers

from cgiserve.config import SERVER_SOFTWARE, MiB, ServerConfig
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


# The Date header of this second: it is formatted once a second, not per response.
_date_second = None
_date = b""


def http_date() -> bytes:
    """Now, as the Date header gives it (what Twisted's datetimeToString gives for now)."""
    global _date_second, _date
    second = int(time.time())
    if second != _date_second:
        _date_second, _date = second, http.datetimeToString(second)
    return _date


# A response sent before the request was read to its end is followed by a
# lingering close, as in Apache and nginx: the server stops writing, then
# reads and drops what the client still sends for a while, so that unread
# request bytes do not make the kernel answer with a reset that destroys
# the response on its way. Apache lingers up to 30 s (MAX_SECS_TO_LINGER),
# nginx 30 s (lingering_time); a client that reads its answer while it
# sends has it in well under this.
LINGER_SECONDS = 5.0
LINGER_BYTES = 4 * MiB

# A connection accepted just before a drain began (or that a reload's old
# worker accepted last) has had no time to send its request: it gets this
# long to, and then its answer, rather than a close that its client, with
# nothing sent on it before, could only take for a failure.
FIRST_REQUEST_SECONDS = 2.0


def error_response(status: int, phrase: bytes, text: str) -> bytes:
    """A short, complete plain-text response that ends its connection, for a request the server will not read on."""
    body = text.encode("utf-8") + b"\n"
    head = (
        b"HTTP/1.1 %d %s\r\n" % (status, phrase)
        + b"Server: " + _SERVER + b"\r\n"
        + b"Date: " + http.datetimeToString() + b"\r\n"
        + b"Connection: close\r\n"
        + b"Content-Type: text/plain; charset=utf-8\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )
    return head + body


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
    # The recorder's bookkeeping: when it began timing, whether it is
    # recorded, and when the response head was written.
    access_started: float | None = None
    access_logged = False
    head_written_at: float | None = None

    def connectionLost(self, reason):
        if self.access_started is not None:
            # A client gone before its response was complete: the recorder
            # hears of it before the request's own notifications (which stop
            # its script), and without a Deferred per request.
            self.site.recorder.request_ended(self, completed=False)
        super().connectionLost(reason)

    def process(self):
        """
        Twisted's C{process}, less what it would redo for every request:
        its own Server header (ours is set instead), a Date formatted
        afresh, and a postpath that the Site computes itself.
        """
        if not self.request_id:
            self.request_id = new_request_id()
        if self.path == b"*":
            # OPTIONS * and the like: Twisted's own answer.
            super().process()
            return
        self.site = self.channel.site
        self.setHeader(b"Server", _SERVER)
        self.setHeader(b"Date", http_date())
        self.prepath = []
        try:
            target = self.site.getResourceFor(self)
            if resource._IEncodingResource.providedBy(target):
                encoder = target.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(target)
        except BaseException:
            self.processingFailed(failure.Failure())

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
        # Before the Site adds X-Request-Id, as process() would: the headers keep their order.
        self.setHeader(b"Server", _SERVER)
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
        channel.close_gracefully(error_response(413, b"Content Too Large", "The request body is too large."))


class Channel(http.HTTPChannel):
    """
    An HTTP/1.1 connection with a deadline for each request's headers, so
    that a client trickling them in cannot hold a connection (the idle
    timeout restarts with every byte).

    A request the server answers before reading it whole (too long a
    request line or header block, a malformed request, a body over the
    limit, a response that ends while its upload is still coming) is
    answered, then the connection is closed gracefully (L{LINGER_SECONDS}).
    """

    _log = Logger()
    _header_call = None
    _awaiting_headers = True
    _host = None
    _peer = None
    _secure = None
    _linger_call = None
    _lingered = 0
    # Set by a drain: every answer from then on closes the connection.
    _draining = False
    # Whether any byte has arrived yet, and whether one of the next request has.
    _fresh = True
    _request_begun = False
    _first_request_call = None
    # Set once the response to a request is out before all of the request is in.
    _unread_request = False

    def getHost(self):
        # Asked once per script run; a connection's own address never changes.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self):
        # Asked once per request; nor does its peer's (which, behind the
        # PROXY protocol, is known before the first request).
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def isSecure(self):
        # Asked once per script run; Twisted's answer is an adapter lookup,
        # and a connection's transport never changes.
        if self._secure is None:
            self._secure = super().isSecure()
        return self._secure

    def writeHeaders(self, version, code, reason, headers):
        """Twisted's status line and header block, as one write rather than a sequence of some thirty pieces."""
        if self.site.recorder is not None and self.requests:
            # The time to first byte, for --metrics; one request at a time
            # is answered, the first (pipelined ones wait unread).
            self.requests[0].head_written_at = self.site.reactor.seconds()
        if not isinstance(headers, Headers):
            super().writeHeaders(version, code, reason, headers)
            return
        block = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                block.extend((name, b": ", value, b"\r\n"))
        block.append(b"\r\n")
        self.transport.write(b"".join(block))

    def dataReceived(self, data):
        if self._linger_call is not None:
            self._discard(data)
            return
        self._fresh = False
        self._request_begun = True
        self._cancel_first_request_wait()
        super().dataReceived(data)
        # Most requests arrive whole in one read: the deadline is only
        # needed for those whose headers are still incomplete after it.
        if self._awaiting_headers and self._header_call is None and self.transport is not None:
            self._header_call = self.callLater(self.site.config.header_timeout, self._headers_too_slow)

    def rawDataReceived(self, data):
        if self._linger_call is not None:
            self._discard(data)
            return
        super().rawDataReceived(data)

    def lineReceived(self, line):
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_oversized(f"request head over {self.totalHeadersSize} bytes")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line):
        self._refuse_oversized(f"line over {self.MAX_LENGTH} bytes")

    def headerReceived(self, line):
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse_oversized(f"more than {self.maxHeaders} header fields")
            return False
        return super().headerReceived(line)

    def _refuse_oversized(self, what: str) -> None:
        """414 for a request line too long, 431 for header fields too large or too many (RFC 9110 15.5.15, RFC 6585 5)."""
        # HTTPChannel counts a request's first line with this flag (name-mangled).
        if self._HTTPChannel__first_line:
            status, phrase, text = 414, b"URI Too Long", "The request line is too long."
        else:
            status, phrase, text = 431, b"Request Header Fields Too Large", "The request header fields are too large."
        self._log.info("{status} for {peer}: {what}", status=status, peer=str(self.transport.getPeer()), what=what)
        self.close_gracefully(error_response(status, phrase, text))

    def _respondToBadRequestAndDisconnect(self):
        self._log.info("400 for {peer}: malformed request", peer=str(self.transport.getPeer()))
        self.close_gracefully(error_response(400, b"Bad Request", "The request is malformed."))

    def allHeadersReceived(self):
        self._cancel_header_deadline()
        self._awaiting_headers = False
        super().allHeadersReceived()

    def checkPersistence(self, request, version):
        if self._draining:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def requestDone(self, request):
        self._awaiting_headers = True
        self._request_begun = False
        body = request.streamed_body
        if body is not None and not body.complete:
            self._unread_request = True
            body.abandon()
        super().requestDone(request)

    def loseConnection(self):
        if self._unread_request:
            self.close_gracefully()
        else:
            super().loseConnection()

    def close_gracefully(self, response: bytes = b"") -> None:
        """
        Send C{response}, stop writing, and close once the client has
        closed its side, sent L{LINGER_BYTES} more, or L{LINGER_SECONDS}
        have passed: the request left unread never turns the close into a
        reset.
        """
        if self._linger_call is not None or self.transport is None:
            return
        self._cancel_header_deadline()
        self.setTimeout(None)
        self.setRawMode()
        if response:
            self.transport.write(response)
        self._networkProducer.unregisterProducer()
        self.transport.resumeProducing()
        if not ISSLTransport.providedBy(self.transport):
            # Under TLS a half-close would cut the TLS stream; the peer
            # closes its side once it has read the response.
            self.transport.loseWriteConnection()
        self._linger_call = self.callLater(LINGER_SECONDS, self._linger_over)

    def _discard(self, data: bytes) -> None:
        self._lingered += len(data)
        if self._lingered > LINGER_BYTES:
            self._linger_over()

    def _linger_over(self) -> None:
        if self._linger_call.active():
            self._linger_call.cancel()
        self.transport.loseConnection()

    @property
    def idle(self) -> bool:
        """Whether no request is being answered here, nor one begun, so the connection may close now."""
        return self._awaiting_headers and not self._request_begun and self._linger_call is None

    def close_when_idle(self) -> None:
        """
        Close now if idle, else right after the response in progress (which
        then says so); a connection that has not sent a byte yet first gets
        L{FIRST_REQUEST_SECONDS} to send its request.
        """
        if self._linger_call is not None:
            return
        self._draining = True
        if self.idle:
            if not self._fresh:
                super().loseConnection()
            elif self._first_request_call is None:
                self._first_request_call = self.callLater(FIRST_REQUEST_SECONDS, self._no_first_request)
            return
        self.persistent = False
        request = self.requests[0] if self.requests else None
        if request is not None and not request.startedWriting:
            request.setHeader(b"Connection", b"close")

    def _no_first_request(self) -> None:
        self._first_request_call = None
        super().loseConnection()

    def _cancel_first_request_wait(self) -> None:
        if self._first_request_call is not None:
            self._first_request_call.cancel()
            self._first_request_call = None

    def connectionLost(self, reason):
        self._cancel_header_deadline()
        self._cancel_first_request_wait()
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        super().connectionLost(reason)

    def _cancel_header_deadline(self):
        if self._header_call is not None:
            if self._header_call.active():
                self._header_call.cancel()
            self._header_call = None

    def _headers_too_slow(self):
        self._header_call = None
        self._log.info("408 for {peer}: request headers too slow", peer=str(self.transport.getPeer()))
        self.close_gracefully(error_response(408, b"Request Timeout", "The request headers took too long."))


class Connection(http._GenericHTTPChannelProtocol):
    """
    One client connection: HTTP/1.1 (a L{Channel}), or HTTP/2 after ALPN.
    The site knows every open one, so that a shutdown can drain them.
    """

    def makeConnection(self, transport):
        # The proxy hands makeConnection straight to the channel, so this,
        # not connectionMade, is where a connection begins.
        self.site.connections.add(self)
        super().makeConnection(transport)

    def connectionLost(self, reason):
        self.site.connections.discard(self)
        super().connectionLost(reason)

    def close_when_idle(self) -> None:
        """Close now if no request is in progress, else once the last one is answered."""
        channel = self._channel
        if isinstance(channel, Channel):
            channel.close_when_idle()
        elif not channel.streams and not channel.transport.disconnecting:
            # HTTP/2: a GOAWAY says no stream is lost, then the connection closes.
            channel.conn.close_connection()
            channel.transport.write(channel.conn.data_to_send())
            channel.transport.loseConnection()


def _channel(factory):
    """A L{Connection} that starts as HTTP/1.1 and may switch to HTTP/2 after ALPN."""
    return Connection(Channel())


class Site(server.Site):
    """
    The site: paths are decoded and stripped of dot-segments before the
    resource tree sees them, so that no resource has to defend itself
    against C{..}, encoded slashes or NULs.
    """

    requestFactory = Request
    protocol = _channel
    _log = Logger()
    # A Recorder for the access log (--access-log) and the metrics
    # (--metrics), or None for neither: like lighttpd's, the access log is
    # opt-in; formatting a line per request through twisted.logger would
    # cost a fifth of a static request's time.
    recorder = None

    def __init__(self, resource, config: ServerConfig, reactor=None):
        # Scripts parse their own forms: Twisted's parsing of every POST
        # body into request.args would cost time, hold a whole multipart
        # body in memory, and answer 400 for one it cannot parse.
        super().__init__(resource, timeout=config.idle_timeout, reactor=reactor, parsePOSTFormSubmission=False)
        self.config = config
        # Every open Connection, for a shutdown to drain.
        self.connections: set[Connection] = set()

    def log(self, request):
        if self.recorder is not None:
            self.recorder.request_ended(request)

    def getResourceFor(self, request):
        if self.recorder is not None:
            self.recorder.watch(request)
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
        # Twisted's getResourceFor, less its copy of the empty prepath.
        request.site = self
        request.prepath = []
        request.sitepath = []
        return resource.getChildForRequest(self.resource, request)
