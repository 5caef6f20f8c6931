"""End to end: script timeouts and kills, vanished clients, script slots, body limits, big and slow transfers, header and idle deadlines, shutdown."""

from __future__ import annotations

import hashlib
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import procfs
from tests.conftest import sh, sha256_script, write_script
from tests.http import (
    Connection,
    IncompleteResponse,
    MiB,
    connect,
    dechunk,
    read_to_end,
    recv_until,
    refuses,
    request,
    reset,
    split_head,
    send_until_stalled,
)
from tests.procfs import Pids, gone, unchanged
from tests.server import MARGIN_SECONDS, assert_clean_exit, assert_log_clean, exited, wait_log

PYTHON = sys.executable


def stubborn(pids: Path, name: str, head: str = "") -> str:
    """
    A script that ignores SIGTERM and starts a grandchild that ignores it too
    (an ignored signal stays ignored across exec); both pids go to files.
    C{head} is printed first (a response head and some body, or nothing).
    """
    return sh(
        f"echo $REQUEST_ID > {pids}/{name}.rid\n"
        f"trap '' TERM\n"
        f"printf '{head}'\n"
        f"sleep 60 &\n"
        f"echo $! > {pids}/{name}.child\n"
        f"echo $$ > {pids}/{name}\n"
        f"wait\n"
    )


def silent(pids: Path, name: str, head: str = "", stdin: str = "") -> str:
    """
    A script that prints C{head}, starts a sleeping grandchild, then runs
    C{stdin} (a command reading the body, if given) and waits without a
    further word, with default SIGTERM handling; its pid and the
    grandchild's go to files.
    """
    return sh(
        f"echo $REQUEST_ID > {pids}/{name}.rid\n"
        f"printf '{head}'\n"
        f"sleep 60 &\n"
        f"echo $! > {pids}/{name}.child\n"
        f"echo $$ > {pids}/{name}\n"
        f"{stdin}\n"
        f"wait\n"
    )


SHA256 = sha256_script(PYTHON)


@pytest.fixture
def start_server(serve):
    """Like C{serve}, but afterwards a server still running gets SIGTERM and 5 s, not 30, before SIGKILL."""
    servers = []

    def start(*options, **kwargs):
        server = serve(*options, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.stop(within=5)


@pytest.fixture
def pids(docroot):
    directory = docroot.parent / "pids"
    directory.mkdir()
    tracker = Pids(directory)
    yield tracker
    tracker.cleanup()


# -- timeouts


@pytest.fixture
def timeout_server(start_server, docroot, pids):
    write_script(docroot, "stubborn.sh", stubborn(pids.dir, "stubborn"))
    write_script(
        docroot,
        "stubborn-chunked.sh",
        stubborn(pids.dir, "stubborn", "Content-Type: text/plain\\n\\npartial"),
    )
    write_script(
        docroot,
        "stubborn-length.sh",
        stubborn(pids.dir, "stubborn", "Content-Type: text/plain\\nContent-Length: 1000\\n\\npartial"),
    )
    return start_server("--timeout", "1", "--kill-grace", "1")


def test_timeout_before_headers_is_504_and_kills_group(timeout_server, pids):
    """A script silent past --timeout gets the client a 504; it and its grandchild, both deaf to SIGTERM, are SIGKILLed after --kill-grace."""
    started = time.monotonic()
    with Connection(timeout_server.port) as connection:
        connection.send(b"GET /stubborn.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        script, child = pids.read("stubborn"), pids.read("stubborn.child")
        response = connection.read_response()
    assert response.status == 504
    request_id = response.header("X-Request-Id")
    assert request_id == pids.text("stubborn.rid")
    left = gone(script, child, timeout=started + 1 + 1 + MARGIN_SECONDS - time.monotonic())
    assert not left, f"still running {time.monotonic() - started:.1f} s after the request: {left}"
    assert not procfs.in_groups([script.pid])
    log = wait_log(timeout_server, rf"\[{request_id}\] was killed by signal 9 \(timeout\)")
    assert f"[{request_id}] stopping: timeout" in log
    assert_log_clean(timeout_server)


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_timeout_after_headers_cuts_response(timeout_server, pids, framing):
    """A script that timed out after its headers and part of its body leaves the client a truncated response, never a clean end."""
    started = time.monotonic()
    with connect(timeout_server.port) as sock:
        sock.sendall(f"GET /stubborn-{framing}.sh HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        script, child = pids.read("stubborn"), pids.read("stubborn.child")
        data, end = read_to_end(sock, timeout=1 + 1 + 10)
    assert end in ("eof", "reset"), f"connection still open: {data!r}"
    status, headers, body = split_head(data)
    assert status == 200
    if framing == "chunked":
        assert headers.get("transfer-encoding") == "chunked"
        content, complete = dechunk(body)
        assert content == b"partial"
        assert not complete, f"a clean end for a cut response: {body!r}"
    else:
        assert headers.get("content-length") == "1000"
        assert body == b"partial"
    request_id = headers["x-request-id"]
    left = gone(script, child, timeout=started + 1 + 1 + MARGIN_SECONDS - time.monotonic())
    assert not left
    log = wait_log(timeout_server, rf"\[{request_id}\] was killed by signal 9 \(timeout\)")
    assert f"[{request_id}] stopping: timeout" in log
    assert_log_clean(timeout_server)


# -- clients that go away


@pytest.fixture
def gone_server(start_server, docroot, pids):
    write_script(docroot, "silent.sh", silent(pids.dir, "silent"))
    write_script(docroot, "silent-head.sh", silent(pids.dir, "silent", "Content-Type: text/plain\\n\\npartial"))
    write_script(docroot, "silent-reader.sh", silent(pids.dir, "silent", stdin="cat > /dev/null"))
    write_script(docroot, "silent-deaf.sh", silent(pids.dir, "silent"))
    # The script's own timeout is far away: only the client's leaving stops it.
    return start_server("--timeout", "30", "--kill-grace", "1")


def assert_client_gone_stops(server, pids, processes) -> None:
    left = gone(*processes, timeout=3)
    assert not left, f"still running 3 s after the client left: {left}"
    assert not procfs.in_groups([processes[0].pid])
    request_id = pids.text("silent.rid")
    wait_log(server, rf"\[{request_id}\] stopping: client gone")
    assert_log_clean(server)


@pytest.mark.parametrize("close", [socket.socket.close, reset], ids=["fin", "rst"])
def test_client_gone_while_script_silent(gone_server, pids, close):
    """A client that leaves while its script sleeps without a word gets the script's process group stopped at once."""
    sock = connect(gone_server.port)
    try:
        sock.sendall(b"GET /silent.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        processes = pids.read("silent"), pids.read("silent.child")
    finally:
        close(sock)
    assert_client_gone_stops(gone_server, pids, processes)


def send_upload_head(sock, target: str) -> None:
    """Send the headers of a 64 MiB upload."""
    sock.sendall(
        f"POST {target} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Content-Type: application/octet-stream\r\nContent-Length: 67108864\r\n\r\n"
    )


def send_half_an_upload(sock, target: str) -> None:
    """Send the headers of a 64 MiB upload and its first 2 MiB."""
    send_upload_head(sock, target)
    sock.sendall(b"x" * (2 * MiB))


def test_client_gone_mid_upload(gone_server, pids):
    """A client that leaves half way through its upload gets the script (reading the body, saying nothing) stopped."""
    sock = connect(gone_server.port)
    try:
        send_half_an_upload(sock, "/silent-reader.sh")
        processes = pids.read("silent"), pids.read("silent.child")
    finally:
        sock.close()
    assert_client_gone_stops(gone_server, pids, processes)


def test_client_gone_mid_upload_script_not_reading(gone_server, pids):
    """A client that resets its connection in the middle of an upload its script does not read gets the script stopped."""
    # A reset, not a FIN: with the server no longer reading (back-pressure),
    # a FIN would wait in the client's send queue behind the unread body,
    # while a reset reaches the server's socket at once.
    sock = connect(gone_server.port)
    try:
        send_upload_head(sock, "/silent-deaf.sh")
        processes = pids.read("silent"), pids.read("silent.child")
        # More than the script's pipe, the server's read and the kernel's buffers hold.
        assert send_until_stalled(sock), "the server kept reading the body"
    finally:
        reset(sock)
    assert_client_gone_stops(gone_server, pids, processes)


def test_client_gone_mid_response(gone_server, pids):
    """A client that leaves after part of the response, while the script is silent, gets the script stopped."""
    with connect(gone_server.port) as sock:
        sock.sendall(b"GET /silent-head.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        processes = pids.read("silent"), pids.read("silent.child")
        recv_until(sock, b"partial")
    assert_client_gone_stops(gone_server, pids, processes)


# -- script slots and the queue


def sleeper(pids: Path) -> str:
    """Sleeps 0.3 s; counts the scripts running at its start (each has a file in running/ while it runs)."""
    return sh(
        f"touch {pids}/running/$$\n"
        f"ls {pids}/running | wc -l >> {pids}/counts\n"
        "sleep 0.3\n"
        f"rm {pids}/running/$$\n"
        "printf 'Content-Type: text/plain\\n\\nslept\\n'\n"
    )


def concurrent_requests(port: int, target: str, count: int) -> list:
    """C{count} requests at once, each on its own connection: a Response or the exception raised."""
    barrier = threading.Barrier(count, timeout=20)

    def one(_):
        try:
            barrier.wait()
            return request(port, "GET", target)
        except Exception as e:  # a connection error is a result to report
            return e

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def assert_200_or_503(results) -> tuple[int, int]:
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, f"{len(errors)} connection errors, first: {errors[0]!r}"
    statuses = [r.status for r in results]
    assert set(statuses) <= {200, 503}, sorted(statuses)
    for response in results:
        if response.status == 503:
            assert response.header("Retry-After"), response.raw[:500]
        else:
            assert response.body == b"slept\n"
    return statuses.count(200), statuses.count(503)


def max_running(pids: Path) -> int:
    return max(int(line) for line in (pids / "counts").read_text().split())


def test_64_requests_big_queue_all_200(start_server, docroot, pids):
    """With 4 script slots and room in the queue, 64 requests at once all get 200, at most 4 scripts running at a time."""
    (pids.dir / "running").mkdir()
    write_script(docroot, "sleep.sh", sleeper(pids.dir))
    server = start_server("--max-scripts", "4", "--max-queue", "100", "--queue-timeout", "60")
    ok, busy = assert_200_or_503(concurrent_requests(server.port, "/sleep.sh", 64))
    assert (ok, busy) == (64, 0)
    assert max_running(pids.dir) <= 4
    assert_log_clean(server)


def test_64_requests_small_queue_some_503(start_server, docroot, pids):
    """With 4 slots, a queue of 2 and --queue-timeout 0.5, 64 requests at once get 200 or 503 with Retry-After, never an error."""
    (pids.dir / "running").mkdir()
    write_script(docroot, "sleep.sh", sleeper(pids.dir))
    server = start_server("--max-scripts", "4", "--max-queue", "2", "--queue-timeout", "0.5")
    ok, busy = assert_200_or_503(concurrent_requests(server.port, "/sleep.sh", 64))
    assert ok >= 4 and busy >= 1, (ok, busy)
    assert max_running(pids.dir) <= 4
    wait_log(server, r"not run: all 4 script slots busy and 2 requests queued")
    assert_log_clean(server)


def test_static_served_while_all_slots_busy(start_server, docroot, pids):
    """A static file is served at once while every script slot is taken by a slow script."""
    (docroot / "static.txt").write_bytes(b"static\n" * 100)
    (pids.dir / "slow").mkdir()
    write_script(docroot, "slow.sh", sh(f"echo $$ > {pids.dir}/slow/$$\nexec sleep 60\n"))
    server = start_server("--max-scripts", "4", "--timeout", "30", "--kill-grace", "1")
    slow = [connect(server.port) for _ in range(4)]
    try:
        for sock in slow:
            sock.sendall(b"GET /slow.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        assert procfs.wait_until(lambda: len(os.listdir(pids.dir / "slow")) == 4, 10)
        scripts = [pids.read(f"slow/{name}") for name in os.listdir(pids.dir / "slow")]
        response = request(server.port, "GET", "/static.txt")
        assert response.status == 200
        assert response.body == b"static\n" * 100
        still = [s for s in scripts if s.running()]
        assert len(still) == 4, "the static file waited for a script slot"
        for sock in slow:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in slow:
            sock.close()
    assert not gone(*scripts, timeout=3)
    assert_log_clean(server)


# -- request body limits

LIMIT = 64 * 1024


@pytest.fixture
def body_server(start_server, docroot):
    write_script(docroot, "sha.py", SHA256)
    return start_server("--max-body", str(LIMIT))


def post_head(target: str, length: int | None, expect: bool = False) -> bytes:
    lines = [f"POST {target} HTTP/1.1", "Host: x", "Content-Type: application/octet-stream"]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    if expect:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100"])
@pytest.mark.parametrize("target", ["/sha.py", "/missing"])
@pytest.mark.parametrize("length", [LIMIT + 1, 10**15])
def test_content_length_over_limit_is_413_before_body(body_server, target, length, expect):
    """A Content-Length over --max-body gets 413 and a closed connection before a byte of the body is sent, and no 100 Continue."""
    with connect(body_server.port) as sock:
        sock.sendall(post_head(target, length, expect))
        data, end = read_to_end(sock, timeout=10)
    assert end in ("eof", "reset"), f"connection left open: {data!r}"
    assert b"100 Continue" not in data
    status, headers, _ = split_head(data)
    assert status == 413
    assert headers.get("connection") == "close"
    assert_log_clean(body_server)


def test_content_length_at_limit_accepted(body_server):
    """A body of exactly --max-body bytes reaches the script whole."""
    body = random.Random(7).randbytes(LIMIT)
    response = request(body_server.port, "POST", "/sha.py", [("Content-Type", "application/octet-stream")], body)
    assert response.status == 200
    assert response.body.decode().split() == [str(LIMIT), str(LIMIT), hashlib.sha256(body).hexdigest()]


def test_chunked_at_limit_accepted(body_server):
    """A chunked body of exactly --max-body bytes reaches the script whole, CONTENT_LENGTH its real length."""
    body = random.Random(8).randbytes(LIMIT)
    with Connection(body_server.port) as connection:
        connection.send(post_head("/sha.py", None))
        for start in range(0, LIMIT, 10_000):
            part = body[start : start + 10_000]
            connection.send(b"%x\r\n%s\r\n" % (len(part), part))
        connection.send(b"0\r\n\r\n")
        response = connection.read_response()
    assert response.status == 200
    assert response.body.decode().split() == [str(LIMIT), str(LIMIT), hashlib.sha256(body).hexdigest()]


def test_chunked_over_limit_is_413_when_it_crosses(body_server):
    """A chunked body gets 413 as soon as it crosses --max-body, without waiting for its end."""
    with connect(body_server.port) as sock:
        sock.sendall(post_head("/sha.py", None))
        sock.sendall(b"%x\r\n%s\r\n" % (LIMIT, b"a" * LIMIT))
        # Up to the limit the server waits for more.
        assert not select.select([sock], [], [], 0.5)[0]
        try:
            sock.sendall(b"1\r\nb\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, end = read_to_end(sock, timeout=10)
    assert end in ("eof", "reset")
    status, headers, _ = split_head(data)
    assert status == 413
    assert headers.get("connection") == "close"
    assert_log_clean(body_server)


def test_default_limit_refuses_200_mib(start_server, docroot):
    """Without --max-body, 100 MiB is the limit: a 200 MiB Content-Length gets 413."""
    write_script(docroot, "sha.py", SHA256)
    server = start_server()
    with connect(server.port) as sock:
        sock.sendall(post_head("/sha.py", 200 * MiB))
        data, _ = read_to_end(sock, timeout=10)
    assert split_head(data)[0] == 413


# -- big and slow transfers


def seeded_chunks(seed: int, sizes):
    """Chunks of the given sizes from a seeded generator: slices of a 4 MiB random pool at random offsets."""
    rng = random.Random(seed)
    pool = rng.randbytes(4 * MiB)
    for size in sizes:
        start = rng.randrange(len(pool) - size + 1)
        yield pool[start : start + size]


@pytest.fixture
def unlimited_server(start_server, docroot):
    write_script(docroot, "sha.py", SHA256)
    return start_server("--max-body", "0", "--timeout", "120")


def test_upload_200_mib_byte_exact(unlimited_server):
    """A 200 MiB upload with Content-Length (over the default limit, with --max-body 0) reaches the script byte for byte."""
    total = 200 * MiB
    digest = hashlib.sha256()
    with Connection(unlimited_server.port, timeout=60) as connection:
        connection.send(post_head("/sha.py", total))
        for chunk in seeded_chunks(200, [MiB] * 200):
            digest.update(chunk)
            connection.send(chunk)
        response = connection.read_response()
    assert response.status == 200
    assert response.body.decode().split() == [str(total), str(total), digest.hexdigest()]
    assert_log_clean(unlimited_server)


def test_chunked_upload_20_mib_byte_exact(unlimited_server):
    """A ~20 MiB chunked upload in chunks of random sizes reaches the script byte for byte, CONTENT_LENGTH its real length."""
    rng = random.Random(20)
    sizes = [rng.randrange(1, 256 * 1024) for _ in range(160)]
    digest = hashlib.sha256()
    with Connection(unlimited_server.port, timeout=60) as connection:
        connection.send(post_head("/sha.py", None))
        for chunk in seeded_chunks(21, sizes):
            digest.update(chunk)
            connection.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        connection.send(b"0\r\n\r\n")
        response = connection.read_response()
    assert response.status == 200
    total = sum(sizes)
    assert total > 19 * MiB
    assert response.body.decode().split() == [str(total), str(total), digest.hexdigest()]
    assert_log_clean(unlimited_server)


def write_big_download(docroot: Path, pids) -> None:
    """big.sh: records its pid, then writes 200 MiB, more than any slow client reads in a test."""
    write_script(
        docroot,
        "big.sh",
        sh(
            f"echo $$ > {pids.dir}/big\n"
            "printf 'Content-Type: application/octet-stream\\n\\n'\n"
            "exec head -c 209715200 /dev/zero\n"
        ),
    )


def test_slow_download_back_pressure(start_server, docroot, pids):
    """A client reading a 200 MiB response slowly holds the script back (it writes at most a few MiB ahead); closing stops it and frees its slot."""
    write_big_download(docroot, pids)
    write_script(docroot, "hello.sh", sh("printf 'Content-Type: text/plain\\n\\nhello\\n'\n"))
    # One script slot: the next request runs only once the first script has ended.
    server = start_server("--timeout", "60", "--kill-grace", "1", "--max-scripts", "1", "--queue-timeout", "5")
    sock = connect(server.port, rcvbuf=64 * 1024)
    try:
        sock.sendall(b"GET /big.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        script = pids.read("big")
        received = 0
        ahead = []
        head = b""
        deadline = time.monotonic() + 3
        for _ in range(30):
            if time.monotonic() > deadline:
                break
            got = 0
            while got < 64 * 1024:
                data = sock.recv(64 * 1024 - got)
                assert data, "the server closed the connection"
                got += len(data)
                if len(head) < 4096:
                    head += data[:4096]
            received += got
            time.sleep(0.2)
            ahead.append(procfs.wchar(script.pid) - received)
        assert script.running()
        assert received < 10 * MiB
        assert max(ahead) < 16 * MiB, f"the script ran {max(ahead) / MiB:.1f} MiB ahead of the client"
    finally:
        sock.close()
    assert not gone(script, timeout=3), "the script still runs 3 s after its client left"
    request_id = split_head(head)[1]["x-request-id"]
    wait_log(server, rf"\[{request_id}\] stopping: client gone")
    wait_log(server, rf"\[{request_id}\] was killed by signal 15 \(client gone\)")
    response = request(server.port, "GET", "/hello.sh")
    assert (response.status, response.body) == (200, b"hello\n"), "the stopped script's slot was not freed"
    assert_log_clean(server)
    assert_clean_exit(server.stop(within=5), server)


# -- slow headers and idle connections

TRICKLE = b"GET /static.txt HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"


def trickle_until_closed(socks: list[socket.socket], seconds: float, interval: float = 0.5) -> dict:
    """
    Send C{TRICKLE} one byte per C{interval} on every socket until the
    server closes each (or C{seconds} pass); map each closed socket to
    (seconds until closed, bytes received).
    """
    started = time.monotonic()
    position = {sock: 0 for sock in socks}
    received = {sock: b"" for sock in socks}
    closed = {}
    for sock in socks:
        sock.setblocking(False)
    for _ in range(int(seconds / interval) + 2):
        if len(closed) == len(socks) or time.monotonic() - started > seconds:
            break
        for sock in socks:
            if sock in closed:
                continue
            try:
                sock.send(TRICKLE[position[sock] : position[sock] + 1])
                position[sock] += 1
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed: the read below tells when
            except BlockingIOError:
                pass
        tick = time.monotonic() + interval
        for _ in range(100):
            open_ = [sock for sock in socks if sock not in closed]
            left = tick - time.monotonic()
            if not open_ or left <= 0:
                break
            for sock in select.select(open_, [], [], left)[0]:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                except BlockingIOError:
                    continue
                if data:
                    received[sock] += data
                else:
                    closed[sock] = (time.monotonic() - started, received[sock])
    return closed


@pytest.fixture
def header_server(start_server, docroot):
    (docroot / "static.txt").write_bytes(b"static\n")
    write_script(docroot, "hello.sh", sh("printf 'Content-Type: text/plain\\n\\nhello\\n'\n"))
    return start_server("--header-timeout", "2")


def test_trickled_headers_dropped_after_header_timeout(header_server):
    """A client trickling its headers a byte every 0.5 s is dropped once --header-timeout 2 has passed."""
    with connect(header_server.port) as sock:
        closed = trickle_until_closed([sock], seconds=8)
    assert sock in closed, "still connected after 8 s"
    after, data = closed[sock]
    assert 1.5 <= after <= 2 + MARGIN_SECONDS, after
    assert b"200 OK" not in data
    assert_log_clean(header_server)


def test_request_served_among_200_trickling_clients(header_server):
    """While 200 clients trickle their headers, a normal request is served; then all 200 are dropped."""
    socks = []
    try:
        for _ in range(200):
            socks.append(connect(header_server.port))
        for sock in socks:
            sock.sendall(TRICKLE[:1])
        with Connection(header_server.port) as connection:
            static = connection.request("GET", "/static.txt")
            script = connection.request("GET", "/hello.sh")
        assert (static.status, static.body) == (200, b"static\n")
        assert (script.status, script.body) == (200, b"hello\n")
        closed = trickle_until_closed(socks, seconds=8)
        assert len(closed) == 200, f"{200 - len(closed)} trickling clients still connected"
    finally:
        for sock in socks:
            sock.close()
    assert_log_clean(header_server)


def test_idle_keepalive_connection_closed(start_server, docroot):
    """With --idle-timeout 1 a keep-alive connection idle after a response is closed by the server after about 1 s."""
    (docroot / "static.txt").write_bytes(b"static\n")
    server = start_server("--idle-timeout", "1")
    with Connection(server.port) as connection:
        assert connection.request("GET", "/static.txt").status == 200
        started = time.monotonic()
        assert connection.closed_by_server(wait=1 + MARGIN_SECONDS + 1)
        assert 0.5 <= time.monotonic() - started <= 1 + MARGIN_SECONDS
    with Connection(server.port) as silent_client:
        started = time.monotonic()
        assert silent_client.closed_by_server(wait=1 + MARGIN_SECONDS + 1)
        assert 0.5 <= time.monotonic() - started <= 1 + MARGIN_SECONDS
    assert_log_clean(server)


def test_idle_timeout_spares_upload_held_back_by_script(start_server, docroot):
    """An upload the server stops reading while its script thinks (back-pressure) is not an idle connection: --idle-timeout 1 does not cut it."""
    write_script(docroot, "think.sh", sh("sleep 2.5\nprintf 'Content-Type: text/plain\\n\\n'\nexec wc -c\n"))
    server = start_server("--idle-timeout", "1")
    body = b"z" * (4 * MiB)
    with Connection(server.port) as connection:
        try:
            response = connection.request("POST", "/think.sh", [("Content-Type", "application/octet-stream")], body)
        except (BrokenPipeError, ConnectionResetError, IncompleteResponse) as e:
            pytest.fail(f"the server dropped the connection: {e!r}")
    assert (response.status, response.body.strip()) == (200, str(len(body)).encode())
    assert_log_clean(server)


# -- shutdown


def test_shutdown_finishes_short_scripts_and_kills_stubborn_ones(start_server, docroot, pids):
    """On SIGTERM a script finishing within --shutdown-grace completes; one ignoring SIGTERM is killed after grace + kill-grace; the server exits 0 leaving no process behind."""
    write_script(
        docroot,
        "short.sh",
        sh(f"echo $$ > {pids.dir}/short\nsleep 0.3\nprintf 'Content-Type: text/plain\\n\\nfinished\\n'\n"),
    )
    write_script(docroot, "stubborn.sh", stubborn(pids.dir, "stubborn"))
    server = start_server("--shutdown-grace", "1", "--kill-grace", "1")
    server_pid = server.process.pid
    short_client, stubborn_client = Connection(server.port), Connection(server.port)
    try:
        stubborn_client.send(b"GET /stubborn.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        script, child = pids.read("stubborn"), pids.read("stubborn.child")
        short_client.send(b"GET /short.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        short = pids.read("short")
        assert {p.pid for p in procfs.children(server_pid)} == {script.pid, short.pid}

        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=1 + 1 + MARGIN_SECONDS + 5)
        except subprocess.TimeoutExpired:
            code = None
        stopped_after = time.monotonic() - started
        leftover = [p for p in (script, child, short) if p.running()]
        groups = procfs.in_groups([script.pid, short.pid])
        orphans = procfs.children(server_pid)
        if code is None:
            server.process.kill()
            server.process.wait(timeout=10)
        server.process.stdout.close()

        finished = short_client.read_response()
        assert (finished.status, finished.body) == (200, b"finished\n")
        try:
            killed = stubborn_client.read_response()
        except IncompleteResponse:
            killed = None
    finally:
        short_client.close()
        stubborn_client.close()
    assert code is not None, f"server still running {stopped_after:.1f} s after SIGTERM"
    assert_clean_exit(code, server)
    assert not leftover, leftover
    assert not groups, groups
    assert not orphans, orphans
    assert killed is not None and killed.status == 503, killed
    log = server.log()
    request_id = pids.text("stubborn.rid")
    assert f"[{request_id}] stopping: shutdown" in log
    assert re.search(rf"\[{request_id}\] was killed by signal 9 \(shutdown\)", log), log[-3000:]
    assert_log_clean(server)


def test_shutdown_stops_script_held_back_by_slow_client(start_server, docroot, pids):
    """On SIGTERM a script whose output waits for a slow client is stopped like any other: the server exits after grace + kill-grace."""
    write_big_download(docroot, pids)
    server = start_server("--shutdown-grace", "1", "--kill-grace", "1")
    with connect(server.port, rcvbuf=64 * 1024) as sock:
        sock.sendall(b"GET /big.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        script = pids.read("big")
        assert sock.recv(65536)
        # The script fills the pipe and the buffers behind the client's
        # small window, then waits: its output is paused.
        written = procfs.wait_until(lambda: unchanged(lambda: procfs.wchar(script.pid)), 5)
        assert written and script.running()
        code = server.stop(within=1 + 1 + MARGIN_SECONDS + 3)
    assert not script.running()
    assert_clean_exit(code, server)
    assert_log_clean(server)


def test_shutdown_delivers_response_of_last_script(start_server, docroot, pids):
    """On SIGTERM the last running script finishing within the grace gets its whole response (4 MiB) to its client, logged, before the server exits."""
    write_script(
        docroot,
        "late.sh",
        sh(f"echo $$ > {pids.dir}/late\nsleep 1.5\nprintf 'Content-Type: application/octet-stream\\n\\n'\nhead -c {4 * MiB} /dev/zero\n"),
    )
    access_log = docroot.parent / "access.log"
    server = start_server("--shutdown-grace", "6", "--access-log", str(access_log))
    with connect(server.port, rcvbuf=64 * 1024) as sock:
        sock.sendall(b"GET /late.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        pids.read("late")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # A client slower than the server's send: the response waits in its buffers.
        time.sleep(2.5)
        data, end = read_to_end(sock, timeout=15, limit=8 * MiB)
    status, headers, body = split_head(data)
    body, terminated = dechunk(body)
    assert (status, end, terminated, len(body)) == (200, "eof", True, 4 * MiB)
    assert body == bytes(4 * MiB)
    assert headers.get("connection") == "close"
    assert_clean_exit(exited(server), server)
    assert time.monotonic() - started < 6
    assert '"GET /late.sh HTTP/1.1" 200 4194304' in access_log.read_text()
    assert_log_clean(server)


def test_shutdown_closes_idle_keepalive_and_refuses_new_connections(start_server, docroot, pids):
    """On SIGTERM an idle keep-alive connection is closed at once and no new connection is accepted, while a busy one gets its response first."""
    write_script(docroot, "quick.sh", sh("printf 'Content-Type: text/plain\\n\\nquick\\n'\n"))
    write_script(docroot, "slow.sh", sh(f"echo $$ > {pids.dir}/slow\nsleep 1\nprintf 'Content-Type: text/plain\\n\\nslow\\n'\n"))
    server = start_server("--shutdown-grace", "6")
    with Connection(server.port) as idle, Connection(server.port) as busy:
        assert idle.request("GET", "/quick.sh").body == b"quick\n"
        busy.send(b"GET /slow.sh HTTP/1.1\r\nHost: x\r\n\r\n")
        pids.read("slow")
        server.process.send_signal(signal.SIGTERM)
        assert idle.closed_by_server(wait=2)
        # The port closes in the reactor turn after SIGTERM: refused within a moment.
        assert procfs.wait_until(lambda: refuses(server.port), 2)
        answer = busy.read_response()
        assert (answer.status, answer.body, answer.header("Connection")) == (200, b"slow\n", "close")
        assert busy.closed_by_server(wait=5)
    assert_clean_exit(exited(server), server)
