"""Tests for cgiserve.response: a script's output -> status, headers and body start (RFC 3875 section 6)."""

from __future__ import annotations

import pytest

from cgiserve.response import (
    CLIENT_REDIRECT,
    DOCUMENT,
    LOCAL_REDIRECT,
    MAX_HEAD_BYTES,
    CGIResponseError,
    HeadParser,
    ScriptResponse,
    interpret,
    parse_field,
    parse_status,
)

# What a script writes after its blank line; it looks like more headers on purpose.
BODY = b"Status: 500\r\n\r\n<p>body</p>\n\n"


def whole(data: bytes) -> list[bytes]:
    """The output in one read."""
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    """The output one byte per read."""
    return [data[i : i + 1] for i in range(len(data))]


def read_head(chunks: list[bytes], parser: HeadParser | None = None) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """
    Feed chunks to a parser as a process protocol would, and return the
    header fields and the whole body: the start that feed returned followed
    by every chunk fed after it.
    """
    parser = parser or HeadParser()
    head = None
    body = b""
    for chunk in chunks:
        if head is None:
            head = parser.feed(chunk)
            if head is not None:
                body = head[1]
        else:
            body += chunk
    if head is None:
        parser.end()
        raise AssertionError("end() accepted an incomplete header block")
    assert parser.done
    return head[0], body


def fields_of(output: bytes) -> list[tuple[bytes, bytes]]:
    """
    The header fields of a script's output, read (h11 style) whole, one
    byte at a time, and both again with body bytes following, each of
    which must agree.
    """
    found = []
    for split in (whole, bytewise):
        for body in (b"", BODY):
            fields, rest = read_head(split(output + body))
            assert rest == body
            found.append(fields)
    assert found[1:] == found[:-1]
    return found[0]


def refused(output: bytes, match: str) -> None:
    """The output is refused, with a message matching C{match}, however it is split and whatever follows."""
    for split in (whole, bytewise):
        for body in (b"", BODY):
            with pytest.raises(CGIResponseError, match=match):
                read_head(split(output + body))


def response_to(output: bytes) -> ScriptResponse:
    """The response a script's output asks for, its head read every way."""
    return interpret(fields_of(output))


# (script output up to and including its blank line, header fields)
HEADS = [
    (b"\n", []),
    (b"\r\n", []),
    (b"Content-Type: text/plain\n\n", [(b"Content-Type", b"text/plain")]),
    (b"Content-Type: text/plain\r\n\r\n", [(b"Content-Type", b"text/plain")]),
    (b"Content-Type:text/plain\n\n", [(b"Content-Type", b"text/plain")]),
    (b"Content-Type:  \ttext/plain \t\r\n\r\n", [(b"Content-Type", b"text/plain")]),
    (b"X-Empty:\n\n", [(b"X-Empty", b"")]),
    (b"X-Colons: a:b: c\n\n", [(b"X-Colons", b"a:b: c")]),
    (b"x-lower: v\n\n", [(b"x-lower", b"v")]),
    (b"X-Bytes: caf\xc3\xa9 \xff\n\n", [(b"X-Bytes", b"caf\xc3\xa9 \xff")]),
    (
        b"Content-Type: text/html\r\nX-A: 1\nX-B: 2\r\n\n",
        [(b"Content-Type", b"text/html"), (b"X-A", b"1"), (b"X-B", b"2")],
    ),
    (
        b"Content-Type: text/html\nX-A: 1\r\n\r\n",
        [(b"Content-Type", b"text/html"), (b"X-A", b"1")],
    ),
    (
        b"Set-Cookie: a=1\nSet-Cookie: b=2\r\nSet-Cookie: c=3\n\n",
        [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Set-Cookie", b"c=3")],
    ),
]


@pytest.mark.parametrize(("output", "fields"), HEADS)
def test_head_is_read_however_it_arrives(output, fields):
    """Every header line is read with LF or CRLF ends, whole or byte by byte, and the body start is kept."""
    assert fields_of(output) == fields


def test_head_is_read_split_anywhere():
    """Splitting the output in two at any byte gives the same fields and body."""
    output = b"Status: 201 Created\r\nContent-Type: text/plain\nX-A:1\r\n\r\n" + BODY
    expected = [(b"Status", b"201 Created"), (b"Content-Type", b"text/plain"), (b"X-A", b"1")]
    for i in range(len(output) + 1):
        assert read_head([output[:i], output[i:]]) == (expected, BODY)


def test_empty_feeds_are_harmless():
    """Feeding no bytes, before or between lines, neither completes nor breaks the head."""
    parser = HeadParser()
    assert parser.feed(b"") is None
    assert parser.feed(b"X-A: 1\n") is None
    assert parser.feed(b"") is None
    assert parser.feed(b"\n") == ([(b"X-A", b"1")], b"")


# (script output, part of the error message)
MALFORMED = [
    (b"no colon here\n\n", "malformed header line"),
    (b"Content-Type: text/plain\nno colon\r\n\r\n", "malformed header line"),
    (b": no name\n\n", "malformed header name"),
    (b"Bad Name: x\n\n", "malformed header name"),
    (b"Name : x\n\n", "malformed header name"),
    (b"X(y): x\n\n", "malformed header name"),
    (b"Caf\xc3\xa9: x\n\n", "malformed header name"),
    # RFC 9112 5.2: obsolete line folding is refused.
    (b"X-A: 1\n folded\n\n", "malformed header line"),
    (b"X-A: 1\n\tfolded: x\n\n", "malformed header name"),
    (b" X-A: 1\n\n", "malformed header name"),
    # A CR or NUL in a value could split the response; no control character but HTAB is valid.
    (b"X-A: a\rb\n\n", "holds a control character"),
    (b"X-A: a\r\r\n\r\n", "holds a control character"),
    (b"X-A: a\0b\n\n", "holds a control character"),
    (b"Location: /x\rSet-Cookie: evil=1\n\n", "holds a control character"),
    (b"X-A: b\x01ar\n\n", "holds a control character"),
    (b"X-A: b\x1far\r\n\r\n", "holds a control character"),
    (b"X-A: b\x7far\n\n", "holds a control character"),
    (b"X-A: \x0bvalue\n\n", "holds a control character"),
]


@pytest.mark.parametrize(("output", "message"), MALFORMED)
def test_malformed_head_is_refused(output, message):
    """A line without a colon, a name that is not a token, a folded line or a control character in a value is refused."""
    refused(output, message)


def test_script_that_ends_mid_head_is_refused():
    """Output that closes before the blank line ending the headers is an error saying so."""
    for output in (b"Content-Type: text/plain\n", b"Content-Type: text/plain", b"X", b"\r", b"X-A: 1\r\n\r"):
        for split in (whole, bytewise):
            with pytest.raises(CGIResponseError, match="ended before its headers"):
                read_head(split(output))


def test_script_with_no_output_is_refused():
    """Output that closes before its first byte has its own message."""
    for chunks in ([], [b""], [b"", b""]):
        with pytest.raises(CGIResponseError, match="without any output"):
            read_head(chunks)


def test_end_after_the_head_is_fine():
    """Closing the output once the head is complete is the normal end of a response."""
    parser = HeadParser()
    parser.feed(b"\n")
    parser.end()
    assert parser.done


def test_feeding_after_the_head_is_complete_raises():
    """Once the head is complete the body goes elsewhere; feeding the parser again is a bug."""
    parser = HeadParser()
    assert parser.feed(b"X-A: 1\n\nbody") == ([(b"X-A", b"1")], b"body")
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_head_parser_is_not_done_until_the_blank_line():
    """done turns true with the blank line, and not before."""
    parser = HeadParser()
    for byte in bytewise(b"X-A: 1\r\n\r"):
        assert parser.feed(byte) is None
        assert not parser.done
    parser.feed(b"\n")
    assert parser.done


def test_head_limit_is_64_kib():
    """The default cap on a header block is 64 KiB."""
    assert MAX_HEAD_BYTES == 64 * 1024


def head_of_size(size: int, line_end: bytes = b"\n") -> bytes:
    """A valid header block of exactly C{size} bytes, blank line included, mostly in 1000-byte lines."""
    line = b"X-Line: " + b"v" * (1000 - 8 - len(line_end)) + line_end
    count = (size - len(line_end)) // len(line) - 1
    rest = size - len(line_end) - count * len(line)
    head = line * count + b"X-Last: " + b"v" * (rest - 8 - len(line_end)) + line_end + line_end
    assert len(head) == size
    return head


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_head_of_exactly_the_limit_is_read(line_end):
    """A header block of exactly MAX_HEAD_BYTES, blank line included, is accepted byte by byte too."""
    head = head_of_size(MAX_HEAD_BYTES, line_end)
    fields = fields_of(head)
    assert b"".join(b"%s: %s%s" % (name, value, line_end) for name, value in fields) + line_end == head


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"])
def test_head_over_the_limit_is_refused(line_end):
    """A header block one byte over MAX_HEAD_BYTES is refused, however it arrives."""
    refused(head_of_size(MAX_HEAD_BYTES + 1, line_end), "over 65536 bytes")


@pytest.mark.parametrize("split", [whole, bytewise])
def test_endless_line_is_refused_as_soon_as_it_is_over_the_limit(split):
    """Output without a newline is refused on the feed that takes it over the limit, not at its end."""
    parser = HeadParser()
    data = b"X-Long: " + b"v" * MAX_HEAD_BYTES
    fed = 0
    with pytest.raises(CGIResponseError, match="over 65536 bytes"):
        for chunk in split(data):
            fed += len(chunk)
            parser.feed(chunk)
    assert fed == (len(data) if split is whole else MAX_HEAD_BYTES + 1)


def test_limit_counts_complete_lines_and_the_pending_one():
    """A partial line after complete ones is refused once their sum is over the limit."""
    parser = HeadParser(max_bytes=20)
    assert parser.feed(b"X-A: 1234567890\n") is None  # 16 bytes
    assert parser.feed(b"X-B:") is None  # 20 bytes
    with pytest.raises(CGIResponseError, match="over 20 bytes"):
        parser.feed(b" ")


def test_limit_is_a_parameter():
    """A smaller cap refuses a head the default accepts."""
    head = b"X-A: 12345\n\n"
    assert read_head([head], HeadParser(max_bytes=len(head))) == ([(b"X-A", b"12345")], b"")
    with pytest.raises(CGIResponseError, match="over 11 bytes"):
        read_head([head], HeadParser(max_bytes=len(head) - 1))


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes its find() calls could examine."""

    searched = 0

    def find(self, sub, start=0, *args):
        CountingBuffer.searched += max(len(self) - start, 0)
        return super().find(sub, start, *args)


@pytest.mark.parametrize("line_length", [16, 1000, 30 * 1024])
def test_parser_never_rescans_what_it_has_searched(monkeypatch, line_length):
    """Fed one byte at a time, a 60 KiB head is searched in one pass, not once per feed."""
    monkeypatch.setattr(CountingBuffer, "searched", 0)
    count = 60 * 1024 // line_length
    head = b"".join(b"X-%05d: %s\n" % (i, b"v" * (line_length - 10)) for i in range(count)) + b"\n"
    parser = HeadParser()
    parser._buffer = CountingBuffer(parser._buffer)
    fields, body = read_head(bytewise(head + b"tail"), parser)
    assert (len(fields), body) == (count, b"tail")
    # Every byte is searched once (a rescan per feed would be ~n^2/2).
    assert len(head) <= CountingBuffer.searched <= 2 * len(head)


# (parse_field line, (name, value))
FIELDS = [
    (b"Name: value", (b"Name", b"value")),
    (b"Name:value", (b"Name", b"value")),
    (b"Name:   value  ", (b"Name", b"value")),
    (b"Name:\tvalue\t", (b"Name", b"value")),
    (b"Name:", (b"Name", b"")),
    (b"Name: a: b", (b"Name", b"a: b")),
    (b"Name: a  b", (b"Name", b"a  b")),
    (b"!#$%&'*+-.^_`|~09azAZ: v", (b"!#$%&'*+-.^_`|~09azAZ", b"v")),
    (b"X: \xff\x80", (b"X", b"\xff\x80")),
    # HTAB is the one control character a value may hold (RFC 9110 5.5).
    (b"X: a\tb", (b"X", b"a\tb")),
]


@pytest.mark.parametrize(("line", "field"), FIELDS)
def test_parse_field_splits_at_the_first_colon(line, field):
    """A line is its token name and its value without surrounding blanks."""
    assert parse_field(line) == field


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"", "malformed header line"),
        (b"Name value", "malformed header line"),
        (b" folded", "malformed header line"),
        (b":value", "malformed header name"),
        (b"Na me: v", "malformed header name"),
        (b"Name : v", "malformed header name"),
        (b"\tName: v", "malformed header name"),
        (b"Na\0me: v", "malformed header name"),
        (b"Name: a\rb", "holds a control character"),
        (b"Name: a\r", "holds a control character"),
        (b"Name: \0", "holds a control character"),
        (b"Name: b\x01ar", "holds a control character"),
        (b"Name: \x7f", "holds a control character"),
    ],
)
def test_parse_field_refuses_malformed_lines(line, message):
    """A line without a colon, a name that is not a token, or a value with a control character but HTAB is refused."""
    with pytest.raises(CGIResponseError, match=message):
        parse_field(line)


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (b"200", (200, None)),
        (b"404 Not Found", (404, b"Not Found")),
        (b"404\tNot Found", (404, b"Not Found")),
        (b"500 Internal  Server Error", (500, b"Internal  Server Error")),
        (b"599 x", (599, b"x")),
        (b"302 ", (302, None)),
        (b"201 Cr\xc3\xa9\xc3\xa9", (201, b"Cr\xc3\xa9\xc3\xa9")),
    ],
)
def test_parse_status_gives_code_and_reason(value, status):
    """A status is a code from 200 to 599 with an optional reason phrase."""
    assert parse_status(value) == status


@pytest.mark.parametrize(
    "value",
    [b"", b"abc", b"99", b"100", b"199", b"600", b"1000", b"0404", b"404Not Found", b"20x", b" 200", b"OK 200"],
)
def test_parse_status_refuses_bogus_status(value):
    """Anything but a three-digit code from 200 to 599, optionally with a reason, is refused."""
    with pytest.raises(CGIResponseError, match="bogus Status"):
        parse_status(value)


# (script output, (kind, status, reason, headers, location, content length))
RESPONSES = [
    (b"Content-Type: text/html\n\n", (DOCUMENT, 200, None, ((b"Content-Type", b"text/html"),), None, None)),
    (b"X-A: 1\n\n", (DOCUMENT, 200, None, ((b"X-A", b"1"),), None, None)),
    (b"\n", (DOCUMENT, 200, None, (), None, None)),
    (b"Status: 404 Not Found\n\n", (DOCUMENT, 404, b"Not Found", (), None, None)),
    (b"Status:404\n\n", (DOCUMENT, 404, None, (), None, None)),
    (b"status: 201\r\n\r\n", (DOCUMENT, 201, None, (), None, None)),
    (b"STATUS: 500 Oops\n\n", (DOCUMENT, 500, b"Oops", (), None, None)),
    (
        b"Content-Length: 12\nContent-Type: text/plain\n\n",
        (DOCUMENT, 200, None, ((b"Content-Length", b"12"), (b"Content-Type", b"text/plain")), None, 12),
    ),
    (b"Content-Length: 0\n\n", (DOCUMENT, 200, None, ((b"Content-Length", b"0"),), None, 0)),
    (b"content-length:007\n\n", (DOCUMENT, 200, None, ((b"content-length", b"007"),), None, 7)),
    (
        b"Set-Cookie: a=1\nX-A: 1\nSet-Cookie: b=2\nSet-Cookie: a=3\n\n",
        (
            DOCUMENT,
            200,
            None,
            ((b"Set-Cookie", b"a=1"), (b"X-A", b"1"), (b"Set-Cookie", b"b=2"), (b"Set-Cookie", b"a=3")),
            None,
            None,
        ),
    ),
    # The server writes these itself and frames the body (RFC 9112 6).
    (
        b"Server: evil/1\nDate: yesterday\nConnection: close\nTransfer-Encoding: chunked\n"
        b"Keep-Alive: timeout=5\nTrailer: X\nUpgrade: h2c\nX-Kept: 1\n\n",
        (DOCUMENT, 200, None, ((b"X-Kept", b"1"),), None, None),
    ),
    (b"transfer-encoding: chunked\nSERVER: x\n\n", (DOCUMENT, 200, None, (), None, None)),
    # RFC 3875 6.2.3: an absolute URI is a client redirect, 302 unless the script says otherwise.
    (
        b"Location: http://x/\n\n",
        (CLIENT_REDIRECT, 302, None, ((b"Location", b"http://x/"),), b"http://x/", None),
    ),
    (
        b"Status: 301 Moved Permanently\nLocation: http://x/\n\n",
        (CLIENT_REDIRECT, 301, b"Moved Permanently", ((b"Location", b"http://x/"),), b"http://x/", None),
    ),
    (
        b"Location: https://x/a?b\nStatus: 303\nSet-Cookie: s=1\n\n",
        (
            CLIENT_REDIRECT,
            303,
            None,
            ((b"Location", b"https://x/a?b"), (b"Set-Cookie", b"s=1")),
            b"https://x/a?b",
            None,
        ),
    ),
    (
        b"Location: //host/x\n\n",
        (CLIENT_REDIRECT, 302, None, ((b"Location", b"//host/x"),), b"//host/x", None),
    ),
    (
        b"location: mailto:a@example.test\n\n",
        (CLIENT_REDIRECT, 302, None, ((b"location", b"mailto:a@example.test"),), b"mailto:a@example.test", None),
    ),
    (
        b"Status: 302\nLocation: /path\n\n",
        (CLIENT_REDIRECT, 302, None, ((b"Location", b"/path"),), b"/path", None),
    ),
    (
        b"Location: http://x/\nContent-Length: 5\n\n",
        (CLIENT_REDIRECT, 302, None, ((b"Location", b"http://x/"), (b"Content-Length", b"5")), b"http://x/", 5),
    ),
    # RFC 3875 6.2.2: a local path without Status is answered by the server itself.
    (b"Location: /path\n\n", (LOCAL_REDIRECT, 200, None, (), b"/path", None)),
    (b"Location:/a/b?c=d\r\n\r\n", (LOCAL_REDIRECT, 200, None, (), b"/a/b?c=d", None)),
    (b"Location: /\nSet-Cookie: a=1\n\n", (LOCAL_REDIRECT, 200, None, (), b"/", None)),
]


@pytest.mark.parametrize(("output", "expected"), RESPONSES)
def test_head_decides_the_response(output, expected):
    """Status, Location and the other headers decide the kind, status, headers and length of the response."""
    response = response_to(output)
    assert (
        response.kind,
        response.status,
        response.reason,
        response.headers,
        response.location,
        response.content_length,
    ) == expected


def test_missing_content_type_stays_missing():
    """The server never guesses a Content-Type the script did not give."""
    response = response_to(b"X-A: 1\n\n")
    assert all(name.lower() != b"content-type" for name, _ in response.headers)


def test_status_header_is_not_passed_on():
    """Status becomes the response's status line and never one of its headers."""
    response = response_to(b"Status: 404 Not Found\nX-A: 1\n\n")
    assert response.headers == ((b"X-A", b"1"),)


# (script output, part of the error message)
BOGUS = [
    (b"Status: abc\n\n", "bogus Status: b'abc'"),
    (b"Status: 99\n\n", "bogus Status"),
    (b"Status: 600\n\n", "bogus Status"),
    (b"Status: 1000\n\n", "bogus Status"),
    (b"Status: 100 Continue\n\n", "bogus Status"),
    (b"Status:\n\n", "bogus Status"),
    (b"Status: 200\nStatus: 404\n\n", "more than one Status"),
    (b"Content-Length: abc\n\n", "bogus Content-Length: b'abc'"),
    (b"Content-Length: -1\n\n", "bogus Content-Length"),
    (b"Content-Length: +1\n\n", "bogus Content-Length"),
    (b"Content-Length: 1 2\n\n", "bogus Content-Length"),
    (b"Content-Length: 1,1\n\n", "bogus Content-Length"),
    (b"Content-Length:\n\n", "bogus Content-Length"),
    (b"Content-Length: 1\nContent-Length: 1\n\n", "bogus Content-Length"),
    (b"Location:\n\n", "empty Location"),
    (b"Location: relative/path\n\n", "bogus Location"),
    (b"Location: ?q\n\n", "bogus Location"),
    (b"Location: /a\nLocation: /b\n\n", "more than one Location"),
]


@pytest.mark.parametrize(("output", "message"), BOGUS)
def test_bogus_response_head_is_refused(output, message):
    """A bad Status, Content-Length or Location, or a repeated one, is refused with the bad value."""
    fields = fields_of(output)
    with pytest.raises(CGIResponseError, match=message):
        interpret(fields)


def test_cgi_response_error_is_a_value_error():
    """CGIResponseError subclasses ValueError, as the style guide asks of domain errors."""
    assert issubclass(CGIResponseError, ValueError)
