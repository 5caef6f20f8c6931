# -*- test-case-name: tests.test_response -*-
"""Pure, incremental: a script's output -> its status, headers and the start of its body (RFC 3875 section 6)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Apache (LimitRequestFieldSize x fields) and nginx (fastcgi_buffer_size)
# refuse script header blocks well below this; 64 KiB leaves room for large
# cookies while bounding what one script can make the server buffer.
MAX_HEAD_BYTES = 64 * 1024

# RFC 9110 5.1: field-name = token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS = re.compile(rb"([2-5][0-9][0-9])(?:[ \t]+(.*))?")
_DIGITS = re.compile(rb"[0-9]+")
# scheme ":" per RFC 3986 3.1, the mark of an absolute URI.
_ABSOLUTE_URI = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*:")
# RFC 9110 5.5: a field value holds no control character but HTAB; CR,
# LF and NUL would split the response, the others confuse its readers.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# The server owns these: it writes Server and Date itself, and it frames
# the body (RFC 9112 6, 9.6); a script's own framing would corrupt the
# connection.
SERVER_OWNED = frozenset(
    {b"server", b"date", b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"upgrade"}
)

DOCUMENT = "document"
LOCAL_REDIRECT = "local-redirect"
CLIENT_REDIRECT = "client-redirect"


class CGIResponseError(ValueError):
    """The script's output is not a valid CGI response; the message says why."""


# Made once per script run; not frozen, for the same reason as RequestFacts.
@dataclass(slots=True)
class ScriptResponse:
    """
    What the server does with a script's header block.

    C{kind} is L{DOCUMENT}, L{LOCAL_REDIRECT} (the server answers with
    C{location} itself, RFC 3875 6.2.2) or L{CLIENT_REDIRECT}.  C{headers}
    excludes Status and the headers the server owns.
    """

    kind: str
    status: int
    reason: bytes | None
    headers: tuple[tuple[bytes, bytes], ...]
    location: bytes | None = None
    content_length: int | None = None


class HeadParser:
    """
    Reads a script's header block as its output arrives.

    Each complete line is parsed once as it arrives, so the work is linear
    in the output however it is split. L{feed} returns C{None} until the
    blank line ending the headers, then the header fields and the body
    bytes that followed; it raises L{CGIResponseError} for a malformed
    block. Call L{end} when the output closes before that.
    """

    def __init__(self, max_bytes: int = MAX_HEAD_BYTES) -> None:
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        self._seen = 0
        self._scanned = 0
        self._fields: list[tuple[bytes, bytes]] = []
        self.done = False

    def feed(self, data: bytes) -> tuple[list[tuple[bytes, bytes]], bytes] | None:
        """Consume output; return (fields, body start) once the head is complete."""
        if self.done:
            raise RuntimeError("the header block is already complete")
        self._buffer += data
        start = 0
        while True:
            newline = self._buffer.find(b"\n", max(start, self._scanned))
            if newline < 0:
                break
            line = bytes(self._buffer[start:newline])
            self._seen += newline + 1 - start
            start = newline + 1
            if self._seen > self._max_bytes:
                raise CGIResponseError(f"header block is over {self._max_bytes} bytes")
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                self.done = True
                return self._fields, bytes(self._buffer[start:])
            self._fields.append(parse_field(line))
        del self._buffer[:start]
        self._scanned = len(self._buffer)
        if self._seen + len(self._buffer) > self._max_bytes:
            raise CGIResponseError(f"header block is over {self._max_bytes} bytes")
        return None

    def end(self) -> None:
        """The output closed; raise unless the header block was complete."""
        if not self.done:
            if self._seen or self._buffer:
                raise CGIResponseError("script ended before its headers did")
            raise CGIResponseError("script ended without any output")


def parse_field(line: bytes) -> tuple[bytes, bytes]:
    """
    One header line (without its line end) as (name, value).

    Accepts C{Name:value} with or without spaces; refuses folded lines,
    names that are not tokens, and values holding a control character
    other than HTAB.
    """
    name, colon, value = line.partition(b":")
    if not colon:
        raise CGIResponseError(f"malformed header line: {line[:80]!r}")
    if not _TOKEN.fullmatch(name):
        raise CGIResponseError(f"malformed header name: {name[:80]!r}")
    value = value.strip(b" \t")
    if _CONTROL.search(value):
        raise CGIResponseError(f"header {name.decode('ascii')} holds a control character: {value[:80]!r}")
    return name, value


def interpret(fields: list[tuple[bytes, bytes]]) -> ScriptResponse:
    """
    Decide the response a header block asks for (RFC 3875 6.2, 6.3).

    A Location that is a path with no Status is a local redirect; any other
    Location is a client redirect, 302 unless the script set a Status.
    A missing Content-Type stays missing: the server never guesses one.
    """
    status = reason = location = content_length = None
    headers = []
    for name, value in fields:
        lowered = name.lower()
        if lowered == b"status":
            if status is not None:
                raise CGIResponseError("more than one Status header")
            status, reason = parse_status(value)
        elif lowered == b"location":
            if location is not None:
                raise CGIResponseError("more than one Location header")
            location = value
            headers.append((name, value))
        elif lowered == b"content-length":
            if content_length is not None or not _DIGITS.fullmatch(value):
                raise CGIResponseError(f"bogus Content-Length: {value[:80]!r}")
            content_length = int(value)
            headers.append((name, value))
        elif lowered not in SERVER_OWNED:
            headers.append((name, value))
    if location is not None:
        if not location:
            raise CGIResponseError("empty Location header")
        if location.startswith(b"/") and not location.startswith(b"//") and status is None:
            return ScriptResponse(LOCAL_REDIRECT, 200, None, (), location)
        if not (location.startswith(b"/") or _ABSOLUTE_URI.match(location)):
            raise CGIResponseError(f"bogus Location: {location[:80]!r}")
        return ScriptResponse(
            CLIENT_REDIRECT, status or 302, reason, tuple(headers), location, content_length
        )
    return ScriptResponse(DOCUMENT, status or 200, reason, tuple(headers), None, content_length)


def parse_status(value: bytes) -> tuple[int, bytes | None]:
    """A Status header value as (code, reason phrase or None)."""
    match = _STATUS.fullmatch(value)
    if match is None:
        raise CGIResponseError(f"bogus Status: {value[:80]!r}")
    return int(match.group(1)), match.group(2) or None
