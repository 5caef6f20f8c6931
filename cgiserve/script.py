# -*- test-case-name: tests.test_e2e_cgi -*-
"""The script resource: one request in, one script run, its response out."""

from __future__ import annotations

import io
import os
from urllib.parse import parse_qs

from twisted.logger import Logger
from twisted.web import pages, resource, server
from twisted.web.http import NO_BODY_CODES

from cgiserve import sendfile
from cgiserve.addresses import connection_ends
from cgiserve.config import ServerConfig
from cgiserve.environ import RequestFacts, build_argv, build_environ, wants_form_argv
from cgiserve.process import ScriptProtocol
from cgiserve.response import LOCAL_REDIRECT, ScriptResponse
from cgiserve.runner import Busy, ScriptRunner
from cgiserve.spawn import OutputReader
from cgiserve.splice import Splice
from cgiserve.upload import FileBody, socket_transport

# RFC 3875 6.2.2 lets a script hand a request back to the server; a chain
# longer than this is a loop.
MAX_LOCAL_REDIRECTS = 10

_NPH_PREFIX = "nph-"


def request_facts(request, script: str, config: ServerConfig) -> RequestFacts:
    """The plain facts of a Twisted request that a script's environment is made of."""
    host_header = request.getHeader(b"host")
    secure = request.isSecure()
    ends = connection_ends(request.getClientAddress(), request.getHost(), host_header, secure)
    content_length = None
    if request.streamed_body is not None:
        content_length = _declared_length(request)
    elif request.requestHeaders.hasHeader(b"content-length") or request.requestHeaders.hasHeader(b"transfer-encoding"):
        # The body is in whole; a chunked one's length is known only now.
        content_length = request.content.seek(0, io.SEEK_END)
        request.content.seek(0)
    return RequestFacts(
        method=request.method,
        request_uri=request.uri,
        query=request.uri.partition(b"?")[2],
        protocol=request.clientproto,
        headers=tuple((name, tuple(values)) for name, values in request.requestHeaders.getAllRawHeaders()),
        script_name="/" + "/".join(os.fsdecode(s) for s in request.prepath),
        script_filename=script,
        path_info="".join("/" + os.fsdecode(s) for s in request.postpath),
        document_root=config.root,
        remote_addr=ends.remote_addr,
        remote_port=ends.remote_port,
        server_addr=ends.server_addr,
        server_port=ends.server_port,
        server_name=ends.server_name,
        scheme="https" if secure else "http",
        request_id=request.request_id,
        content_length=content_length,
        content_type=request.getHeader(b"content-type"),
        remote_user=request.remote_user,
    )


# A script's output read in full reads makes a big response: its
# connection then sends in writes of this size, not Twisted's 128 KiB, and
# pauses the script only with this much unsent (still one read's worth).
BIG_READ_BYTES = 64 * 1024
WIDE_WRITE_BYTES = 1024 * 1024


class ResponseWriter:
    """
    The HTTP side of a script run: writes the script's response to the
    request, streaming with back-pressure, and turns failures into a 502 or
    504 (or a cut connection once the response has begun).

    The request finishes as soon as the response is complete: when the
    script closes its output, or as soon as the last byte of its
    Content-Length (or, for HEAD, 204 and 304, its headers) is written.
    From then on the client leaving is no reason to stop the script, which
    finishes its work; what else it writes is dropped.
    """

    _log = Logger()

    def __init__(self, request, script: str, sendfile_dirs: tuple[str, ...] = ()) -> None:
        self.request = request
        self.script = script
        self.sendfile_dirs = sendfile_dirs
        self.gone = False
        self.handed_back = False
        self.producer = None
        self.remaining: int | None = None
        self.overflowed = False
        self._widened = None
        self.splice: Splice | None = None
        # The run and its start (a Deferred that a queued run has yet to fire), once asked for.
        self.run: ScriptProtocol | None = None
        self.started = None
        request.notifyFinish().addErrback(self._client_gone)

    def _client_gone(self, _failure) -> None:
        """The client left before its response was complete: no reason to run on, nor to wait for a slot."""
        self.gone = True
        self._end_splice()
        if self.started is not None:
            self.started.cancel()
            self.run.stop("client gone")

    def _active(self) -> bool:
        return not (self.gone or self.handed_back or self.request.finished)

    def head_received(self, response: ScriptResponse, producer) -> None:
        if not self._active():
            return
        if response.kind == LOCAL_REDIRECT:
            self.handed_back = True
            redirect_locally(self.request, response.location, self.script)
            return
        request = self.request
        if self.sendfile_dirs:
            named = [value for name, value in response.headers if name.lower() == sendfile.HEADER]
            if named:
                self._send_file(response, named)
                return
        request.setResponseCode(response.status, response.reason)
        # The server never guesses a type for a script (RFC 3875 6.3.1).
        request.defaultContentType = None
        for name, value in response.headers:
            request.responseHeaders.addRawHeader(name, value)
        self.producer = producer
        request.registerProducer(producer, True)
        if request.method == b"HEAD" or response.status in NO_BODY_CODES:
            self._complete()
            return
        self.remaining = response.content_length
        if self.remaining == 0:
            self._complete()

    def _send_file(self, response: ScriptResponse, named: list[bytes]) -> None:
        """Send the file the script named instead of its body, which is read on and dropped."""
        request = self.request
        try:
            if len(named) > 1:
                raise sendfile.Refused(502, "more than one X-Sendfile header")
            path = sendfile.target(named[0], self.sendfile_dirs)
        except sendfile.Refused as refused:
            self._log.warn(
                "{script} [{request_id}] X-Sendfile {named}: {reason}",
                script=self.script,
                request_id=request.request_id,
                named=b", ".join(named).decode("utf-8", "replace"),
                reason=refused.reason,
            )
            self.script_failed(refused.status, f"X-Sendfile {refused.reason}")
            return
        self.handed_back = True
        request.setResponseCode(response.status, response.reason)
        content_type = None
        for name, value in response.headers:
            lowered = name.lower()
            if lowered == b"content-type":
                content_type = value
            elif lowered not in (sendfile.HEADER, b"content-length"):
                request.responseHeaders.addRawHeader(name, value)
        self._end_upload()
        sendfile.send(request, path, content_type)

    def body_received(self, data: bytes) -> None:
        if self.remaining is not None:
            if len(data) > self.remaining and not self.overflowed:
                self.overflowed = True
                self._log.warn(
                    "{script} [{request_id}] wrote more than its Content-Length; the rest is dropped",
                    script=self.script,
                    request_id=self.request.request_id,
                )
            data = data[: self.remaining]
            self.remaining -= len(data)
        if not self._active() or not data:
            return
        big = len(data) >= BIG_READ_BYTES and self._widened is None
        if big:
            self._widen()
        self.request.write(data)
        if self.remaining == 0:
            self._complete()
        elif big and self._widened:
            self._splice_rest()

    def _widen(self) -> None:
        """Send a big response in big writes, until it is over."""
        transport = socket_transport(self.request.channel.transport)
        if transport is None:
            self._widened = False
            return
        self._widened = transport
        transport.SEND_LIMIT = transport.bufferSize = WIDE_WRITE_BYTES
        self.request.notifyFinish().addBoth(self._narrow)

    def _narrow(self, _result) -> None:
        """The response is over (or its client gone): the connection's usual writes again."""
        for name in ("SEND_LIMIT", "bufferSize"):
            vars(self._widened).pop(name, None)

    def _splice_rest(self) -> None:
        """
        Over a plain socket (no TLS, no HTTP/2, no PROXY wrapper), the rest
        of a big body goes from the script's pipe to the socket by splice(2).
        An ssl: endpoint's TLS lives inside the TCP transport itself, so
        the transport being the socket's own does not rule TLS out.
        """
        reader = getattr(self.producer.transport, "pipes", {}).get(1)
        plain = self.request.channel.transport is self._widened and not self.request.isSecure()
        if not plain or not isinstance(reader, OutputReader):
            return
        self.splice = Splice(reader, self._widened, self.request, self, bool(self.request.chunked))

    def spliced(self) -> None:
        """The splice has moved the last byte of the Content-Length."""
        self._complete()

    def client_lost(self) -> None:
        """The splice found the client gone: drop the connection, which stops the script."""
        self._abort()

    def raw_received(self, data: bytes) -> None:
        if not self._active():
            return
        request = self.request
        if not request.startedWriting:
            # An NPH script frames its own response, so the connection
            # cannot carry another one after it.
            request.startedWriting = 1
            request.channel.persistent = False
        request.write(data)

    def output_ended(self) -> None:
        if not self._active():
            return
        if self.remaining:
            self._log.warn(
                "{script} [{request_id}] ended {remaining} bytes short of its Content-Length",
                script=self.script,
                request_id=self.request.request_id,
                remaining=self.remaining,
            )
            self._abort()
            return
        self._unregister()
        self._finish()

    def script_failed(self, status: int, reason: str) -> None:
        if not self._active():
            return
        self._unregister()
        request = self.request
        if request.startedWriting:
            self._abort()
            return
        # Forget whatever headers the script had given before it failed.
        for name, _ in list(request.responseHeaders.getAllRawHeaders()):
            if name not in _KEPT:
                request.responseHeaders.removeHeader(name)
        if status == 503:
            request.setHeader(b"Retry-After", RETRY_AFTER_SECONDS)
        self._end_upload()
        error_page(status).render(request)

    def _complete(self) -> None:
        """The whole response is written: finish it, and read on whatever the script still writes."""
        producer = self.producer
        self._unregister()
        self._finish()
        if producer is not None:
            # A slow client may have paused the output; nothing waits for it now.
            producer.resumeProducing()

    def _end_splice(self) -> None:
        if self.splice is not None:
            self.splice.end()
            self.splice = None

    def _unregister(self) -> None:
        self._end_splice()
        if self.producer is not None:
            self.producer = None
            self.request.unregisterProducer()

    def _finish(self) -> None:
        self._end_upload()
        self.request.finish()

    def _end_upload(self) -> None:
        """Before the response ends: close the connection after it if the upload is still coming."""
        body = self.request.streamed_body
        if body is not None and not body.complete:
            # Nobody will read the rest of the upload.
            self.request.channel.persistent = False
            if not self.request.startedWriting:
                self.request.setHeader(b"Connection", b"close")

    def _abort(self) -> None:
        """Cut the connection so the client sees a truncated response, never a clean end."""
        self.gone = True
        self._end_splice()
        self.request.channel.transport.abortConnection()


# The headers an error page keeps from a response the script had begun.
_KEPT = frozenset({b"Server", b"Date", b"X-Request-Id"})

# How long a client told 503 should wait before trying again.
RETRY_AFTER_SECONDS = b"5"

_ERROR_PAGES = {
    404: ("Not Found", "The file the script named is not there."),
    502: ("Bad Gateway", "The script did not give a valid response."),
    503: ("Service Unavailable", "The server is too busy to run the script now; try again shortly."),
    504: ("Gateway Timeout", "The script took too long to answer."),
}


def error_page(status: int):
    """The short page for a script request that failed with C{status}."""
    brief, detail = _ERROR_PAGES[status]
    return pages.errorPage(status, brief, detail)


def redirect_locally(request, location: bytes, script: str) -> None:
    """
    Answer the request as if the client had asked for C{location} with a
    GET (RFC 3875 6.2.2): the body and its headers are dropped.
    """
    request.local_redirects += 1
    if request.local_redirects > MAX_LOCAL_REDIRECTS:
        ResponseWriter._log.warn(
            "{script} [{request_id}] more than {limit} local redirects",
            script=script,
            request_id=request.request_id,
            limit=MAX_LOCAL_REDIRECTS,
        )
        error_page(502).render(request)
        return
    path, _, query = location.partition(b"?")
    request.uri = location
    request.path = path
    request.args = parse_qs(query, keep_blank_values=True)
    if request.method != b"HEAD":
        request.method = b"GET"
    request.content = io.BytesIO()
    if request.streamed_body is not None:
        # The first script had the upload; the rest of it goes nowhere.
        request.streamed_body.stopProducing()
    for name in (b"content-length", b"content-type", b"transfer-encoding"):
        request.requestHeaders.removeHeader(name)
    request.render(request.site.getResourceFor(request))


class CGIScript(resource.Resource):
    """
    An executable file run as a CGI script for every method (RFC 3875).

    The path below the script is its PATH_INFO. The request body goes to
    the script's stdin; a small url-encoded form POST also goes to argv[1]
    (the tutorial's convention).
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, path: str, config: ServerConfig, interpreter: str | None, runner: ScriptRunner) -> None:
        super().__init__()
        self.path = path
        self.config = config
        self.interpreter = interpreter
        self.runner = runner

    def streams_body(self, request) -> bool:
        """Whether the script can start before its body arrives: not when the body is wanted as argv[1]."""
        return not (
            self.config.form_argv
            and wants_form_argv(request.method, request.getHeader(b"content-type"), _declared_length(request))
        )

    def render(self, request):
        facts = request_facts(request, self.path, self.config)
        nph = os.path.basename(self.path).startswith(_NPH_PREFIX)
        if nph and request.clientproto not in (b"HTTP/1.0", b"HTTP/1.1"):
            return self._fail(request, 502, "an nph- script cannot answer over " + os.fsdecode(request.clientproto))
        form_body = None
        if request.streamed_body is None and self.config.form_argv:
            if wants_form_argv(facts.method, facts.content_type, facts.content_length):
                form_body = request.content.read()
                request.content.seek(0)
                if b"\0" in form_body:
                    # Not a url-encoded form after all, and no argument can
                    # hold a NUL: the body goes to stdin only.
                    form_body = None
        argv = build_argv(self.path, self.interpreter, form_body, facts.query, self.config.isindex_argv)
        env = build_environ(facts, self.config.environ)
        writer = ResponseWriter(request, self.path, self.config.sendfile_dirs)
        if not facts.content_length:
            body = None
        elif request.streamed_body is not None:
            body = request.streamed_body
        else:
            body = FileBody(request.content)
        protocol = ScriptProtocol(
            self.path,
            request.request_id,
            writer,
            body,
            nph=nph,
            clock=self.runner.reactor,
            timeout=self.config.timeout,
            kill_grace=self.config.kill_grace,
            max_stderr=self.config.max_stderr,
        )
        # The access log waits for this run to end before writing the request's line.
        request.script_run = protocol
        started = self.runner.start(
            protocol, self.interpreter or self.path, argv, env, os.path.dirname(self.path), stdin=body is not None
        )
        started.addErrback(self._not_started, request, writer)
        writer.run, writer.started = protocol, started
        return server.NOT_DONE_YET

    def _not_started(self, failure, request, writer: ResponseWriter) -> None:
        failure.trap(Busy)
        request.script_run.refuse()
        reason = f"not run: {failure.value}"
        self._log.warn("{script} [{request_id}]: {reason}", script=self.path, request_id=request.request_id, reason=reason)
        writer.script_failed(503, reason)

    def _fail(self, request, status: int, reason: str) -> bytes:
        self._log.warn("{script} [{request_id}]: {reason}", script=self.path, request_id=request.request_id, reason=reason)
        return error_page(status).render(request)


def _declared_length(request) -> int | None:
    length = request.getHeader(b"content-length")
    return int(length) if length is not None and length.isdigit() else None
