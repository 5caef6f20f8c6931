"""Tests for cgiserve.site's connections: oversized and malformed requests answered, lingering closes, draining, response heads."""

from __future__ import annotations

import tempfile
import time

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http, resource, server
from twisted.web.http_headers import Headers

from cgiserve.config import SERVER_SOFTWARE, ServerConfig
from cgiserve.site import FIRST_REQUEST_SECONDS, LINGER_BYTES, LINGER_SECONDS, Channel, Site, error_response, http_date

MAX_BODY = 1000


class HalfClosingTransport(StringTransport):
    """A TCP transport as the channel sees it, recording when its writing side is shut down."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


class Pending(resource.Resource):
    """A resource whose requests stay in progress until a test finishes them."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []

    def render(self, request):
        self.requests.append(request)
        return server.NOT_DONE_YET


class ConnectionTestCase(SynchronousTestCase):
    """A real Site and connection over an in-memory transport and a fake clock."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.resource = Pending()
        config = ServerConfig(root=tempfile.gettempdir(), max_body=MAX_BODY)
        self.site = Site(self.resource, config, reactor=self.clock)
        self.connection = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8000))
        self.transport = HalfClosingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.connection.makeConnection(self.transport)

    @property
    def channel(self) -> Channel:
        return self.connection._channel

    def assert_answered_then_lingering(self, status: int) -> None:
        """The connection answered C{status} in full, stopped writing, and still reads."""
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 %d " % status), self.transport.value()[:200])
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"Connection: close", head)
        self.assertIn(b"Content-Length: %d" % len(body), head)
        self.assertTrue(self.transport.write_closed)
        self.assertFalse(self.transport.disconnecting)


class OversizedRequestTests(ConnectionTestCase):
    """Requests over Twisted's size limits get 414 or 431, not a silent close."""

    def test_long_request_line_gets_414(self):
        """A 64 KiB request line is answered 414 URI Too Long."""
        self.connection.dataReceived(b"GET /" + b"a" * 65536 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assert_answered_then_lingering(414)

    def test_long_request_line_in_pieces_gets_414(self):
        """A request line that grows past the limit over several reads is answered 414."""
        for _ in range(20):
            self.connection.dataReceived(b"GET /" + b"a" * 4096)
        self.assert_answered_then_lingering(414)

    def test_long_header_field_gets_431(self):
        """A 64 KiB header field is answered 431 Request Header Fields Too Large."""
        self.connection.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 65536 + b"\r\n\r\n")
        self.assert_answered_then_lingering(431)

    def test_header_block_over_total_gets_431(self):
        """Header fields that are each short but together over 16 KiB are answered 431."""
        fields = b"".join(b"X-F%d: %s\r\n" % (n, b"v" * 1000) for n in range(20))
        self.connection.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        self.assert_answered_then_lingering(431)

    def test_too_many_header_fields_gets_431(self):
        """More header fields than Twisted's maximum are answered 431."""
        fields = b"".join(b"a:\r\n" for _ in range(Channel.maxHeaders + 1))
        self.connection.dataReceived(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
        self.assert_answered_then_lingering(431)

    def test_nothing_reaches_the_resource(self):
        """An oversized request never becomes a request the site renders."""
        self.connection.dataReceived(b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 65536 + b"\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        self.assertEqual(self.resource.requests, [])


class MalformedRequestTests(ConnectionTestCase):
    """Requests the server answers before reading them whole close gracefully too."""

    def test_malformed_request_line_gets_400_page(self):
        """A request line that is not METHOD TARGET VERSION gets a complete 400 response."""
        self.connection.dataReceived(b"NONSENSE\r\n\r\n")
        self.assert_answered_then_lingering(400)

    def test_malformed_header_gets_400_page(self):
        """A header line without a colon gets a complete 400 response."""
        self.connection.dataReceived(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        self.assert_answered_then_lingering(400)

    def test_body_over_limit_gets_413_and_lingers(self):
        """A Content-Length over --max-body gets 413 before the body is read, then the body is read and dropped."""
        self.connection.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 5000)
        self.assert_answered_then_lingering(413)
        self.assertEqual(self.resource.requests, [])

    def test_slow_headers_get_408(self):
        """Headers still incomplete at the header deadline get 408, then a graceful close."""
        self.connection.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(self.site.config.header_timeout)
        self.assert_answered_then_lingering(408)


class LingerTests(ConnectionTestCase):
    """After answering early, the connection reads and drops input for a bounded time and amount."""

    def setUp(self) -> None:
        super().setUp()
        self.connection.dataReceived(b"GET /" + b"a" * 65536)
        self.answer = self.transport.value()

    def test_input_is_dropped_while_lingering(self):
        """What the client sends after the answer is read and dropped: nothing more is written, nothing parsed."""
        self.connection.dataReceived(b" HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.transport.value(), self.answer)
        self.assertEqual(self.resource.requests, [])
        self.assertFalse(self.transport.disconnecting)

    def test_closes_after_linger_seconds(self):
        """The connection closes LINGER_SECONDS after the answer if the client has not closed it first."""
        self.clock.advance(LINGER_SECONDS - 0.1)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)

    def test_closes_after_linger_bytes(self):
        """The connection closes once the client has sent LINGER_BYTES more, without waiting out the time."""
        chunk = b"x" * 65536
        for _ in range(LINGER_BYTES // len(chunk)):
            self.connection.dataReceived(chunk)
        self.assertFalse(self.transport.disconnecting)
        self.connection.dataReceived(b"x")
        self.assertTrue(self.transport.disconnecting)

    def test_client_close_ends_linger(self):
        """A client that closes its side ends the linger: no timer is left behind."""
        self.connection.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DrainTests(ConnectionTestCase):
    """What a draining server does with each connection."""

    def test_site_knows_open_connections(self):
        """A connection is in the site's set while open, and leaves it when it closes."""
        self.assertEqual(self.site.connections, {self.connection})
        self.connection.connectionLost(None)
        self.assertEqual(self.site.connections, set())

    def _finish(self):
        (request,) = self.resource.requests
        request.write(b"done")
        request.finish()
        self.resource.requests.clear()

    def _answer_one(self):
        self.connection.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self._finish()
        self.transport.clear()

    def _answered_then_closed(self):
        self._finish()
        self.assertIn(b"Connection: close", self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_idle_connection_closes_at_once(self):
        """A keep-alive connection between requests is closed when asked to close when idle."""
        self._answer_one()
        self.connection.close_when_idle()
        self.assertTrue(self.transport.disconnecting)

    def test_begun_request_is_answered_before_the_close(self):
        """A connection with part of its next request in is not idle: that request is answered, with Connection: close."""
        self._answer_one()
        self.connection.dataReceived(b"GET /slow HTTP/1.1\r\n")
        self.connection.close_when_idle()
        self.assertFalse(self.transport.disconnecting)
        self.connection.dataReceived(b"Host: x\r\n\r\n")
        self._answered_then_closed()

    def test_fresh_connection_gets_time_for_its_first_request(self):
        """A connection that has sent nothing yet is answered if its request comes within FIRST_REQUEST_SECONDS."""
        self.connection.close_when_idle()
        self.connection.close_when_idle()
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(FIRST_REQUEST_SECONDS / 2)
        self.connection.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(FIRST_REQUEST_SECONDS)
        self.assertFalse(self.transport.disconnecting)
        self._answered_then_closed()

    def test_fresh_connection_that_sends_nothing_closes(self):
        """A connection that sends nothing within FIRST_REQUEST_SECONDS of the drain is closed, no timer left behind."""
        self.connection.close_when_idle()
        self.clock.advance(FIRST_REQUEST_SECONDS)
        self.assertTrue(self.transport.disconnecting)
        self.connection.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_busy_connection_closes_after_its_response(self):
        """A connection whose request is in progress stays open, and its response says Connection: close."""
        self.connection.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        self.connection.close_when_idle()
        self.assertFalse(self.transport.disconnecting)
        self._answered_then_closed()


@pytest.mark.parametrize(
    ("status", "phrase", "text"),
    [(400, b"Bad Request", "Bad."), (414, b"URI Too Long", "Long."), (431, b"Request Header Fields Too Large", "Big.")],
)
def test_error_response_is_complete(status, phrase, text):
    """An early error response has its status, Connection: close, and a Content-Length that matches its body."""
    head, _, body = error_response(status, phrase, text).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 %d %s" % (status, phrase)
    assert b"Connection: close" in lines
    assert b"Content-Length: %d" % len(body) in lines
    assert body == text.encode() + b"\n"


class ResponseHeadTests(ConnectionTestCase):
    """The head of a response: our Server header, then Date, then X-Request-Id, in one write."""

    def test_head_starts_with_server_date_and_request_id(self):
        """A request's answer names this server, the time and the request, in that order."""
        self.connection.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        [request] = self.resource.requests
        request.write(b"body")
        lines = self.transport.value().split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 200 OK")
        self.assertEqual([line.split(b":")[0] for line in lines[1:4]], [b"Server", b"Date", b"X-Request-Id"])
        self.assertEqual(lines[1], b"Server: " + SERVER_SOFTWARE.encode())

    def test_head_is_what_twisted_would_write(self):
        """writeHeaders gives the bytes of Twisted's own, in one write."""
        headers = Headers({b"A": [b"1", b"2"], b"B": [b"3"]})
        self.channel.writeHeaders(b"HTTP/1.1", b"200", b"OK", headers)
        ours = self.transport.value()
        self.transport.clear()
        http.HTTPChannel.writeHeaders(self.channel, b"HTTP/1.1", b"200", b"OK", headers)
        self.assertEqual(ours, self.transport.value())

    def test_star_gets_twisteds_answer(self):
        """OPTIONS * is answered as Twisted answers it, without the resource tree."""
        self.connection.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.resource.requests, [])
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"Server: " + server.version, self.transport.value())

    def test_addresses_and_security_are_asked_once(self):
        """The channel keeps its transport's answers: they never change on one connection."""
        self.assertIs(self.channel.getPeer(), self.channel.getPeer())
        self.assertIs(self.channel.getHost(), self.channel.getHost())
        self.assertFalse(self.channel.isSecure())
        self.assertEqual(self.channel.getPeer(), IPv4Address("TCP", "127.0.0.1", 50000))


class FormBodyTests(ConnectionTestCase):
    """Scripts parse their own forms: the server leaves a POST body as it came."""

    def post(self, content_type: bytes, body: bytes):
        framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        self.connection.dataReceived(
            b"POST /x?q=1 HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + framed
        )
        [request] = self.resource.requests
        self.addCleanup(request.content.close)
        return request

    def test_url_encoded_form_is_not_parsed(self):
        request = self.post(b"application/x-www-form-urlencoded", b"a=1&b=2")
        self.assertEqual(request.args, {b"q": [b"1"]})
        self.assertEqual(request.content.read(), b"a=1&b=2")

    def test_multipart_form_is_not_parsed(self):
        """Twisted would read the whole body into memory to parse it, and answer 400 for a part it cannot."""
        body = b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nvalue\r\n--b--\r\n'
        request = self.post(b"multipart/form-data; boundary=b", body)
        self.assertEqual(request.args, {b"q": [b"1"]})
        self.assertEqual(request.content.read(), body)


def test_http_date_is_twisteds_for_now(monkeypatch):
    """The cached Date is what Twisted formats for the current second, and follows the clock."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.75)
    assert http_date() == http.datetimeToString(1_700_000_000)
    monkeypatch.setattr(time, "time", lambda: 1_700_000_001.25)
    assert http_date() == b"Tue, 14 Nov 2023 22:13:21 GMT"
