"""Load generators and check clients; every loop is bounded in count and time."""

import hashlib
import http.client
import os
import re
import socket
import subprocess
import threading
import time

from procfs import MiB

HOST = "127.0.0.1"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


class CheckError(Exception):
    """A server answered wrongly; the scenario is not benchmarked."""


def check(port, path, expected):
    """One GET: raise CheckError unless status 200 and body ``expected``."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read(len(expected) + 1024)
    except (OSError, http.client.HTTPException) as e:
        raise CheckError(f"GET {path}: {e!r}") from None
    finally:
        conn.close()
    if resp.status != 200 or body != expected:
        raise CheckError(f"GET {path}: {resp.status} {body[:80]!r}")


def concurrent(port, path, count, expected, during, timeout=20):
    """``count`` GETs of ``path`` at once, each in a thread; ``during()`` runs meanwhile.

    Returns what ``during()`` returned once every answer is in; raises
    CheckError unless each is status 200 with body ``expected`` within
    ``timeout`` seconds.
    """
    answers = [None] * count

    def get(i):
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            answers[i] = resp.status, resp.read(len(expected) + 1024)
        except (OSError, http.client.HTTPException) as e:
            answers[i] = e
        finally:
            conn.close()

    deadline = time.monotonic() + timeout
    threads = [threading.Thread(target=get, args=(i,), daemon=True)
               for i in range(count)]
    for thread in threads:
        thread.start()
    value = during()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    for answer in answers:
        if answer is None:
            raise CheckError(f"GET {path}: no answer within {timeout} s")
        if isinstance(answer, Exception):
            raise CheckError(f"GET {path}: {answer!r}")
        if answer != (200, expected):
            raise CheckError(f"GET {path}: {answer!r}"[:100])
    return value


def _ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return float(value) * UNITS[unit]


def wrk(port, path, threads, connections, duration):
    """Run wrk; return requests, rps, p50 and p99 (ms), errors and read_errors."""
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s",
         "--timeout", "5s", "--latency", f"http://{HOST}:{port}{path}"],
        capture_output=True, text=True, timeout=duration + 60, check=True,
    ).stdout
    sock = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    found = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if found:
        sock = dict(zip(sock, map(int, found.groups())))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def find(pattern):
        match = re.search(pattern, out, re.M)
        if not match:
            raise CheckError(f"wrk output lacks {pattern!r}: {out[-200:]!r}")
        return match.group(1)

    return {
        "requests": int(find(r"(\d+) requests in")),
        "rps": float(find(r"Requests/sec:\s+([\d.]+)")),
        "p50": _ms(find(r"^\s+50%\s+(\S+)")),
        "p99": _ms(find(r"^\s+99%\s+(\S+)")),
        "errors": (int(bad.group(1)) if bad else 0)
        + sock["connect"] + sock["write"] + sock["timeout"],
        # wrk also counts each close-delimited response as a read error.
        "read_errors": sock["read"],
    }


def upload(port, path, size, timeout=60):
    """POST ``size`` bytes (a 1 MiB random block repeated); check the sha256.

    Returns the wall time in seconds.
    """
    block = os.urandom(MiB)
    count = size // MiB
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(block)
    start = time.monotonic()

    def body():
        for _ in range(count):
            if time.monotonic() - start > timeout:
                raise CheckError(f"POST {path}: upload over {timeout} s")
            yield block

    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body(), {
            "Content-Length": str(count * MiB),
            "Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        reply = resp.read(4096)
    except (OSError, http.client.HTTPException) as e:
        raise CheckError(f"POST {path}: {e!r}") from None
    finally:
        conn.close()
    elapsed = time.monotonic() - start
    if resp.status != 200 or reply.split()[:1] != [digest.hexdigest().encode()]:
        raise CheckError(f"POST {path}: {resp.status} {reply[:80]!r}")
    return elapsed


def _get(sock, port, path):
    """Send a GET for ``path`` on ``sock`` and read its 200 head; the body bytes read with it."""
    sock.connect((HOST, port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n"
                 "Connection: close\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        raise CheckError(f"GET {path}: {head[:80]!r}")
    return body


def fast_download(port, path, size, timeout=60):
    """GET ``path`` and read it as fast as it comes, to the server's close.

    Returns the wall time in seconds. The body must hold ``size`` bytes
    (with chunk framing, if any, at most 1% more).
    """
    sock = socket.socket()
    try:
        sock.settimeout(timeout)
        start = time.monotonic()
        got = len(_get(sock, port, path))
        while chunk := sock.recv(MiB):
            got += len(chunk)
            if time.monotonic() - start > timeout:
                raise CheckError(f"GET {path}: download over {timeout} s")
        elapsed = time.monotonic() - start
    finally:
        sock.close()
    if not size <= got <= size * 1.01:
        raise CheckError(f"GET {path}: {got} bytes for {size}")
    return elapsed


def slow_download(port, path, rate, seconds, on_end):
    """GET ``path`` with a small receive buffer, reading ``rate`` bytes/s.

    Stops after ``seconds``; ``on_end()`` is called just before the socket
    is closed. Returns the number of bytes read after the response head
    (chunk framing, if any, included).
    """
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.settimeout(5)
        body = _get(sock, port, path)
        start = time.monotonic()
        got = len(body)
        end = start + seconds
        while (now := time.monotonic()) < end:
            allowed = int(rate * (now - start))
            if got < allowed:
                chunk = sock.recv(min(65536, allowed - got))
                if not chunk:
                    raise CheckError(f"GET {path}: closed after {got} bytes")
                got += len(chunk)
            else:
                time.sleep(0.01)
        on_end()
        return got
    finally:
        sock.close()
