"""A raw HTTP/1.x client and raw-socket helpers for end-to-end tests: the exact bytes sent, the exact bytes received."""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from dataclasses import dataclass, field

_TIMEOUT_SECONDS = 15

MiB = 1024 * 1024


class IncompleteResponse(ConnectionError):
    """The server closed the connection (or stopped sending) in the middle of a response."""


@dataclass
class Response:
    """One parsed response; C{raw} holds every byte of it as received, framing included."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    chunked: bool = False
    chunks: list[bytes] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The value of the only (or first) header called C{name}, or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of the headers called C{name}, in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


class Connection:
    """A client socket to 127.0.0.1 that reads responses one at a time. Use as a context manager."""

    def __init__(self, port: int, timeout: float = _TIMEOUT_SECONDS) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = bytearray()
        self._raw = bytearray()
        self.eof = False

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str = "GET",
        target: str | bytes = "/",
        headers=(),
        body: bytes | None = None,
        version: str = "HTTP/1.1",
        host: bool = True,
    ) -> Response:
        """Send one request (adding Host and, with a body, Content-Length) and read its response."""
        self.send(build_request(method, target, headers, body, version, self.sock.getpeername()[1], host))
        return self.read_response(method)

    # -- reading

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
            return False
        self._buffer += data
        return True

    def _take(self, count: int) -> bytes:
        while len(self._buffer) < count:
            if not self._fill():
                raise IncompleteResponse(f"connection closed {count - len(self._buffer)} bytes early")
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        self._raw += data
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self._buffer:
            if not self._fill():
                raise IncompleteResponse(f"connection closed within a line: {bytes(self._buffer[:80])!r}")
        return self._take(self._buffer.index(b"\r\n") + 2)[:-2]

    def read_until(self, marker: bytes) -> bytes:
        """Receive until C{marker} has arrived; return what has arrived so far, leaving it to be read."""
        while marker not in self._buffer:
            if not self._fill():
                raise IncompleteResponse(f"connection closed before {marker!r} arrived")
        return bytes(self._buffer)

    def read_until_close(self) -> bytes:
        """Every byte until the server closes the connection."""
        while self._fill():
            pass
        data = bytes(self._buffer)
        self._buffer.clear()
        self._raw += data
        return data

    def closed_by_server(self, wait: float = 5) -> bool:
        """Whether the server closes the connection (within C{wait} seconds) without sending more."""
        if self._buffer:
            return False
        self.sock.settimeout(wait)
        try:
            return not self._fill()
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def read_response(self, method: str = "GET") -> Response:
        """Read exactly one response, framed as RFC 9112 section 6.3 says."""
        self._raw = bytearray()
        status_line = self._line().decode("latin-1")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        headers = []
        while True:
            line = self._line()
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name, value.strip(" \t")))
        response = Response(version, int(code), reason, headers, b"", b"")
        encoding = (response.header("Transfer-Encoding") or "").lower()
        length = response.header("Content-Length")
        if method == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200:
            pass
        elif encoding == "chunked":
            response.chunked = True
            while True:
                size = int(self._line().split(b";", 1)[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                response.chunks.append(self._take(size))
                if self._take(2) != b"\r\n":
                    raise IncompleteResponse("chunk not followed by CRLF")
            response.body = b"".join(response.chunks)
        elif length is not None:
            response.body = self._take(int(length))
        else:
            response.body = self.read_until_close()
        response.raw = bytes(self._raw)
        return response


def build_request(
    method: str,
    target: str | bytes,
    headers=(),
    body: bytes | None = None,
    version: str = "HTTP/1.1",
    port: int | None = None,
    host: bool = True,
) -> bytes:
    """The bytes of a request; C{headers} is a sequence of (name, value) pairs sent as given."""
    if isinstance(target, str):
        target = target.encode("latin-1")
    lines = [method.encode("ascii") + b" " + target + b" " + version.encode("ascii")]
    names = {name.lower() for name, _ in headers}
    if host and "host" not in names:
        lines.append(f"Host: 127.0.0.1:{port}".encode("ascii"))
    for name, value in headers:
        lines.append(_bytes(name) + b": " + _bytes(value))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(b"Content-Length: " + str(len(body)).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def request(
    port: int, method: str = "GET", target: str | bytes = "/", headers=(), body=None, version: str = "HTTP/1.1"
) -> Response:
    """One request on a fresh connection, closed afterwards."""
    with Connection(port) as connection:
        return connection.request(method, target, headers, body, version)


def wait_for(predicate, timeout: float = 10, interval: float = 0.05):
    """Poll C{predicate} until it returns something true or the timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- raw sockets


def connect(port: int, timeout: float = _TIMEOUT_SECONDS, rcvbuf: int | None = None) -> socket.socket:
    """A TCP socket connected to 127.0.0.1:C{port}; C{rcvbuf}, if given, is its receive buffer from the start."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Set before connecting, so that the window is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def refuses(port: int) -> bool:
    """Whether a connection to 127.0.0.1:C{port} is refused.

    A reset during the handshake (the listener closed while the connection
    sat in its backlog) is not yet a refusal: callers poll until it is.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


def reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN (SO_LINGER 0), as a crashing client would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def unsent(sock: socket.socket) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def unsent_stalls(sock: socket.socket, seconds: float = 0.3) -> bool:
    """Whether data waits in the send queue and none of it is taken for C{seconds}: the peer stopped reading."""
    before = unsent(sock)
    time.sleep(seconds)
    return before > 0 and unsent(sock) == before


def send_until_stalled(sock: socket.socket, limit: int = 32 * MiB, piece: int = 64 * 1024) -> bool:
    """Send as fast as the connection takes it until the peer stops reading (L{unsent_stalls}); whether it did within C{limit} bytes."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    data, sent = b"x" * piece, 0
    try:
        while sent < limit:
            try:
                sent += sock.send(data)
            except BlockingIOError:
                if unsent_stalls(sock):
                    return True
    finally:
        sock.settimeout(timeout)
    return False


def recv_until(sock: socket.socket, marker: bytes, reads: int = 100) -> bytes:
    """What the socket receives until C{marker} has arrived (at most C{reads} reads); fails if it does not."""
    data = bytearray()
    for _ in range(reads):
        chunk = sock.recv(65536)
        data += chunk
        if marker in data or not chunk:
            break
    assert marker in data, f"{marker!r} not received: {bytes(data[:300])!r}"
    return bytes(data)


def read_to_end(sock: socket.socket, timeout: float = _TIMEOUT_SECONDS, limit: int = 4 * MiB) -> tuple[bytes, str]:
    """Every byte until the server closes ("eof") or resets ("reset") the connection, or C{timeout} passes."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    for _ in range(100_000):
        left = deadline - time.monotonic()
        if left <= 0 or len(data) > limit:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data), "reset"
        except TimeoutError:
            break
        if not chunk:
            return bytes(data), "eof"
        data += chunk
    return bytes(data), "timeout"


def split_head(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and the rest of a raw response."""
    head, found, body = data.partition(b"\r\n\r\n")
    assert found, f"no complete response head in {data[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The data of a chunked body as far as it goes, and whether its terminating 0-chunk arrived."""
    out = bytearray()
    pos = 0
    for _ in range(len(body) + 1):
        end = body.find(b"\r\n", pos)
        if end < 0:
            return bytes(out), False
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out), body[end + 2 : end + 4] == b"\r\n"
        out += body[end + 2 : end + 2 + size]
        if len(body) < end + 2 + size + 2:
            return bytes(out), False
        pos = end + 2 + size + 2
    return bytes(out), False
