"""End to end: answered scripts run to their end, leaving clients stop the rest, refusals arrive whole, headers and host names are clean."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import procfs
from tests.conftest import sh, write_script
from tests.http import (
    Connection,
    MiB,
    build_request,
    connect,
    dechunk,
    read_to_end,
    request,
    split_head,
    unsent,
    wait_for,
)
from tests.ops import read_json_lines
from tests.procfs import Pids, gone, unchanged
from tests.server import MARGIN_SECONDS, Server, assert_log_clean

PYTHON = sys.executable

KiB = 1024

# --max-body of the strict server; the option takes bytes ("1M" is refused).
MAX_BODY = MiB

# How long a script that has answered waits for its test's go-ahead: long
# enough for any client to have read its response and left, bounded so a
# failed test leaves no script behind for long.
GATE_SECONDS = 10


# -- scripts, written once into a shared tree
#
# Scripts that keep state take the name of a run directory (under the
# tree's runs/, outside the document root) as their query string.


def gated(runs: Path, head: str, then: str = "", exit_code: int = 3) -> str:
    """
    A script that prints C{head}, runs C{then}, waits for its run's C{go}
    file (GATE_SECONDS at most), sleeps 0.5 s, appends its request id to
    the run's C{marker} and exits with C{exit_code}.
    """
    return sh(
        f'D={runs}/"$QUERY_STRING"\n'
        f"printf '{head}'\n"
        f"{then}\n"
        f"for i in $(seq {GATE_SECONDS * 10}); do [ -e \"$D/go\" ] && break; sleep 0.1; done\n"
        "sleep 0.5\n"
        'echo "$REQUEST_ID" >> "$D/marker"\n'
        f"exit {exit_code}\n"
    )


# Prints the CGI environment as JSON.
ENV = f"""#!{PYTHON}
import json, os
print("Content-Type: application/json")
print()
print(json.dumps(dict(os.environ)))
"""


@dataclass
class Tree:
    """The shared document root and, beside it, the run directories and the servers' logs."""

    top: Path
    root: Path
    runs: Path


@pytest.fixture(scope="module")
def tree():
    top = Path(tempfile.mkdtemp(prefix="cgiserve-delivery-"))
    root, runs = top / "root", top / "runs"
    root.mkdir()
    runs.mkdir()
    write_script(root, "length3.sh", gated(runs, "Content-Type: text/plain\\nContent-Length: 3\\n\\nok\\n"))
    write_script(root, "length0.sh", gated(runs, "Content-Type: text/plain\\nContent-Length: 0\\n\\n"))
    write_script(root, "closes-early.sh", gated(runs, "Content-Type: text/plain\\n\\nearly\\n", "exec >&-", exit_code=0))
    # Never reads stdin; a sleeping child, then its own sleep.
    write_script(
        root,
        "deaf.sh",
        sh(
            f'D={runs}/"$QUERY_STRING"\n'
            'echo "$REQUEST_ID" > "$D/rid"\n'
            "sleep 60 &\n"
            'echo $! > "$D/child"\n'
            'echo $$ > "$D/script"\n'
            "sleep 60\n"
        ),
    )
    # Exits at once: reads nothing, writes nothing.
    write_script(root, "mute.sh", sh("exit 0\n"))
    write_script(root, "control.sh", sh("printf 'Content-Type: text/plain\\nFoo: b\\001ar\\n\\nbody\\n'\n"))
    write_script(root, "tab.sh", sh("printf 'Content-Type: text/plain\\nFoo: a\\tb\\n\\nbody\\n'\n"))
    write_script(root, "env.cgi", ENV)
    yield Tree(top, root, runs)
    shutil.rmtree(top, ignore_errors=True)


class Running:
    """A module's server on the tree, with its JSON access log."""

    def __init__(self, tree: Tree, name: str, *options: str) -> None:
        self.access_log = tree.top / f"access-{name}.json"
        self.server = Server(
            tree.root,
            "--access-log",
            str(self.access_log),
            "--access-log-format",
            "json",
            # No script here is meant to be stopped by its timeout.
            "--timeout",
            "120",
            "--kill-grace",
            "1",
            # Every script has ended by the module's end; none should hold up the stop.
            "--shutdown-grace",
            "1",
            *options,
            log_path=tree.top / f"server-{name}.log",
        )

    @property
    def port(self) -> int:
        return self.server.port

    def log(self) -> str:
        return self.server.log()

    def access(self, request_ids, timeout: float = 10) -> dict[str, dict]:
        """The access log's lines for these request ids, by id, once all are written (or C{timeout} passes)."""
        wanted = set(request_ids)

        def lines():
            found = {line["request_id"]: line for line in read_json_lines(self.access_log)}
            return found if wanted <= found.keys() else None

        found = wait_for(lines, timeout) or {}
        missing = wanted - found.keys()
        assert not missing, f"no access log line for {sorted(missing)}:\n{self.access_log.read_text()[-3000:]}"
        return {request_id: found[request_id] for request_id in wanted}


@pytest.fixture(scope="module")
def server(tree):
    running = Running(tree, "default")
    running.server.start()
    yield running
    running.server.stop(within=5)


@pytest.fixture(scope="module")
def strict_server(tree):
    running = Running(tree, "strict", "--max-body", str(MAX_BODY))
    running.server.start()
    yield running
    running.server.stop(within=5)


@dataclass
class Run:
    """One test's run directory (the query string its scripts get), and the processes read from it."""

    name: str
    dir: Path
    pids: Pids

    def open_gate(self) -> None:
        (self.dir / "go").touch()

    def marker(self) -> list[str]:
        path = self.dir / "marker"
        return path.read_text().split() if path.exists() else []


@pytest.fixture
def run(tree):
    name = uuid.uuid4().hex
    directory = tree.runs / name
    directory.mkdir()
    tracker = Pids(directory)
    this = Run(name, directory, tracker)
    yield this
    # Whatever the outcome: scripts waiting at the gate end now, stragglers are killed.
    this.open_gate()
    tracker.cleanup()


# -- a script that has answered runs to its end


def ask_and_leave(port: int, method: str, target: str, body: bytes | None) -> str:
    """One request on a fresh connection, its response read whole and the connection closed at once, like curl: its request id."""
    with Connection(port, timeout=5) as connection:
        response = connection.request(method, target, [("Content-Type", "application/octet-stream")], body)
    assert response.status == 200, response.raw[:500]
    return response.header("X-Request-Id")


def assert_ran_to_end(server: Running, run: Run, request_ids: list[str], script: str, exit_code: int) -> None:
    """Each run appended its id to the marker, and its access log line says it completed and exited on its own."""
    assert run.marker() == [], "a script finished before its clients had all left"
    run.open_gate()
    assert wait_for(lambda: len(run.marker()) >= len(request_ids), timeout=GATE_SECONDS), run.marker()
    assert sorted(run.marker()) == sorted(request_ids)
    lines = server.access(request_ids)
    for line in lines.values():
        assert (line["status"], line["completed"]) == (200, True), line
        assert (line["script"], line["exit_code"], line["signal"], line["stopped"]) == (script, exit_code, None, None), line
    assert_log_clean(server)


@pytest.mark.parametrize(
    "method, name, body",
    [("POST", "length3.sh", b"data"), ("HEAD", "length3.sh", None), ("POST", "length0.sh", b"data")],
    ids=["content-length", "head", "content-length-0"],
)
def test_answered_script_runs_to_its_end(server, tree, run, method, name, body):
    """If a script's response is complete (its Content-Length written, or its headers for HEAD) and the client leaves at once, the script still runs to its end and exits on its own."""
    target = f"/{name}?{run.name}"
    request_ids = [ask_and_leave(server.port, method, target, body) for _ in range(6)]
    assert_ran_to_end(server, run, request_ids, str(tree.root / name), 3)


def test_script_that_closed_stdout_runs_to_its_end(server, tree, run):
    """If a script closes its stdout after a response without Content-Length and carries on, a client that leaves at once does not stop it."""
    target = f"/closes-early.sh?{run.name}"
    request_ids = [ask_and_leave(server.port, "POST", target, b"data") for _ in range(6)]
    assert_ran_to_end(server, run, request_ids, str(tree.root / "closes-early.sh"), 0)


# -- a client that leaves mid-upload
#
# The script never reads its stdin, so the server soon stops reading the
# connection (back-pressure) and can learn of the client's FIN only from
# its socket's state.

UPLOAD_HEAD = (
    "POST /deaf.sh?{run} HTTP/1.1\r\nHost: x\r\n"
    "Content-Type: application/octet-stream\r\nContent-Length: 10485760\r\n\r\n"
)
PIECE = b"x" * (16 * KiB)


def start_deaf_upload(port: int, run: Run) -> tuple[socket.socket, procfs.Tracked, procfs.Tracked]:
    """A connection whose 10 MiB upload to deaf.sh has begun; the script and its child, once both run."""
    sock = connect(port)
    try:
        sock.sendall(UPLOAD_HEAD.format(run=run.name).encode())
        return sock, run.pids.read("script"), run.pids.read("child")
    except Exception:
        sock.close()
        raise


def send_until_not_read(sock: socket.socket, port: int, limit: int = 4 * MiB) -> int:
    """
    Send the body in pieces, each wholly taken by the server's kernel
    before the next, until the server has stopped reading the connection
    (its receive queue holds bytes and does not move); the bytes sent.
    Before it stops, the server fills the script's stdin pipe and holds
    one read, a MiB each (UPLOAD_CHUNK_BYTES).
    """
    client_port = sock.getsockname()[1]

    def server_unread() -> int:
        queues = procfs.tcp_queues(port, client_port)
        assert queues is not None, "the server's end of the connection is gone"
        return queues[1]

    sent = 0
    while sent < limit:
        sock.sendall(PIECE)
        sent += len(PIECE)
        assert procfs.wait_until(lambda: unsent(sock) == 0, 5), f"the server's window closed after {sent} bytes"
        if server_unread() and unchanged(server_unread):
            return sent
    pytest.fail(f"the server was still reading after {sent} bytes")


def assert_stopped_for_client_gone(server: Running, run: Run, processes, within: float) -> None:
    """The processes end C{within} seconds, and the access log says the client's leaving stopped the script."""
    started = time.monotonic()
    left = gone(*processes, timeout=5)
    took = time.monotonic() - started
    assert not left, f"still running 5 s after the client left: {left}"
    assert took < within, f"stopped only {took:.1f} s after the client left"
    request_id = run.pids.text("rid")
    line = server.access([request_id])[request_id]
    assert (line["stopped"], line["signal"], line["completed"]) == ("client gone", 15, False), line
    assert_log_clean(server)


def test_client_gone_mid_upload_with_fin(server, run):
    """If a client closes its connection normally (a FIN) half way through an upload its script does not read, the script and its child are stopped within about a second."""
    sock, script, child = start_deaf_upload(server.port, run)
    try:
        send_until_not_read(sock, server.port)
    finally:
        # Nothing is left in the send queue: the FIN goes out at once.
        sock.close()
    # The server checks a paused connection every 0.5 s.
    assert_stopped_for_client_gone(server, run, (script, child), within=0.5 + MARGIN_SECONDS)


def test_client_gone_mid_upload_with_fin_behind_1_mib(server, run):
    """If a client that has sent 1 MiB of a 10 MiB upload its script does not read closes normally, the script and its child are stopped within about a second."""
    # Its FIN waits behind what it still queues; the server widens a stalled
    # upload's receive buffer to take that, up to net.core.rmem_max.
    sent = min(MiB, int(Path("/proc/sys/net/core/rmem_max").read_text()) // 4)
    sock, script, child = start_deaf_upload(server.port, run)
    try:
        sock.sendall(b"x" * sent)
    finally:
        sock.close()
    assert_stopped_for_client_gone(server, run, (script, child), within=0.5 + MARGIN_SECONDS)


# -- refusals arrive whole, then a graceful close
#
# On loopback a reset does not destroy a response that has already
# arrived, so what tells a graceful close from a plain one is the rest of
# the request: sent after the answer is in, it must still be taken (and
# dropped) by the server, not refused with a reset, and the client reads
# the whole answer and then an orderly end.

def send_then_read(port: int, first: bytes, rest: bytes = b"", timeout: float = 20):
    """
    Send C{first}; once the server's answer has arrived (still unread),
    send C{rest}; only then read, to the end. The status, headers, body,
    how the connection ended ("eof", "reset", "timeout") and the
    client's port.
    """
    with connect(port, timeout=timeout) as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(first)
        if rest:

            def answered():
                queues = procfs.tcp_queues(client_port, port)
                return queues is None or queues[1] > 0

            assert procfs.wait_until(answered, 5), f"no answer after the first {len(first)} bytes"
            try:
                sock.sendall(rest)
            except OSError as e:
                pytest.fail(f"the server refused the rest of the request ({len(rest)} bytes) after answering: {e!r}")
        received, end = read_to_end(sock, timeout=timeout)
    status, headers, body = split_head(received)
    return status, headers, body, end, client_port


def assert_whole_then_eof(status, headers, body, end, expected: int) -> None:
    """The response has the C{expected} status and all of its body (by Content-Length or chunks), then the server closed gracefully."""
    assert status == expected, (status, headers, body)
    assert headers.get("connection") == "close", headers
    if headers.get("transfer-encoding") == "chunked":
        content, complete = dechunk(body)
        assert complete and content, f"a cut chunked body: {body!r}"
    else:
        assert len(body) == int(headers["content-length"]) > 0, (headers, body)
    assert end == "eof", f"the connection ended with a {end}, not a graceful close"


def log_lines(server: Running, needle: str) -> list[str]:
    return [line for line in server.log().splitlines() if needle in line]


def assert_logged_once(server: Running, needle: str, also: str = "") -> None:
    """Exactly one line of the server's log holds C{needle} (and C{also}), once it is written."""
    found = wait_for(lambda: [line for line in log_lines(server, needle) if also in line], timeout=5)
    assert len(found) == 1, found or server.log()[-3000:]


def oversized_head(case: str, port: int) -> tuple[bytes, bytes]:
    """A request head over a limit, split where the server has surely seen enough to refuse it."""
    if case == "request-line":
        data, cut = build_request("GET", "/" + "a" * (64 * KiB), port=port), 20 * KiB
    elif case == "header-field":
        data, cut = build_request("GET", "/", [("X-Big", "b" * (64 * KiB))], port=port), 20 * KiB
    else:
        # Fields of 100 bytes each, 20 KiB in all: each well within a
        # line's limit, together over the head's 16 KiB.
        fields = [(f"X-Field-{i:03d}", "v" * 86) for i in range(200)]
        data, cut = build_request("GET", "/", fields, port=port), 18 * KiB
    return data[:cut], data[cut:]


@pytest.mark.parametrize(
    "case, expected",
    [("request-line", 414), ("header-field", 431), ("header-block", 431)],
)
def test_oversized_head_gets_whole_answer(strict_server, case, expected):
    """If a request line or a header field is too long, or the header fields together too large, a client that sends it all before reading gets the whole error response, then a graceful close; the server logs one line."""
    first, rest = oversized_head(case, strict_server.port)
    status, headers, body, end, client_port = send_then_read(strict_server.port, first, rest)
    assert_whole_then_eof(status, headers, body, end, expected)
    assert_logged_once(strict_server, f"{expected} for ", f"port={client_port})")
    assert_log_clean(strict_server)


def test_malformed_request_line_gets_whole_400(strict_server):
    """If the request line is malformed, the client gets the whole 400 with a body, then a graceful close; the server logs one line."""
    status, headers, body, end, client_port = send_then_read(strict_server.port, b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n")
    assert_whole_then_eof(status, headers, body, end, 400)
    assert_logged_once(strict_server, "400 for ", f"port={client_port})")
    assert_log_clean(strict_server)


def test_body_over_limit_sent_anyway_gets_whole_413(strict_server):
    """If a client sends all of a 2 MiB body over --max-body (1 MiB) before reading, it gets the whole 413, then a graceful close."""
    size = 2 * MiB
    data = build_request(
        "POST", "/mute.sh", [("Content-Type", "application/octet-stream")], b"z" * size, port=strict_server.port
    )
    head = data.index(b"\r\n\r\n") + 4
    status, headers, body, end, _ = send_then_read(strict_server.port, data[: head + 64 * KiB], data[head + 64 * KiB :])
    assert_whole_then_eof(status, headers, body, end, 413)
    assert_logged_once(strict_server, f"413: Content-Length {size} is over the limit of {MAX_BODY} bytes")
    assert_log_clean(strict_server)


def test_early_502_during_upload_arrives_whole(server):
    """If a script exits at once without reading its 3 MiB upload or writing a word, a client that sends all of the body before reading gets the whole 502, then a graceful close."""
    data = build_request(
        "POST", "/mute.sh", [("Content-Type", "application/octet-stream")], b"u" * (3 * MiB), port=server.port
    )
    head = data.index(b"\r\n\r\n") + 4
    status, headers, body, end, _ = send_then_read(server.port, data[:head], data[head:])
    assert_whole_then_eof(status, headers, body, end, 502)
    assert_logged_once(server, f"[{headers['x-request-id']}]: script ended without any output")
    assert_log_clean(server)


# -- header hygiene


def test_control_character_in_script_header_is_502(server):
    """If a script's header value holds a control character (\\x01), the client gets 502 and the server logs one line quoting it."""
    response = request(server.port, "GET", "/control.sh")
    assert response.status == 502
    assert b"b\x01ar" not in response.raw
    request_id = response.header("X-Request-Id")
    found = wait_for(lambda: [line for line in log_lines(server, f"[{request_id}]") if "control character" in line], 5)
    assert len(found) == 1, server.log()[-3000:]
    assert "header Foo holds a control character: b'b\\x01ar'" in found[0], found[0]
    assert_log_clean(server)


def test_tab_in_script_header_passes(server):
    """If a script's header value holds a horizontal tab, the client gets it as written."""
    response = request(server.port, "GET", "/tab.sh")
    assert (response.status, response.header("Foo"), response.body) == (200, "a\tb", b"body\n")


# -- the host a request names


def environ(port: int, target: str, headers=()) -> dict[str, str]:
    """The environment env.cgi gets for a GET of C{target} with exactly these C{headers}."""
    with Connection(port) as connection:
        connection.send(build_request("GET", target, headers, host=False))
        response = connection.read_response()
    assert response.status == 200, response.raw[:500]
    return json.loads(response.body)


def test_server_name_is_host_in_lower_case(server):
    """If the Host header is Example.ORG:8080, the script gets SERVER_NAME example.org."""
    env = environ(server.port, "/env.cgi", [("Host", "Example.ORG:8080")])
    assert (env["SERVER_NAME"], env["HTTP_HOST"]) == ("example.org", "Example.ORG:8080")


def test_absolute_form_target_names_the_server(server):
    """If the request target is in absolute form, its host replaces the Host header and its path and query run the script."""
    env = environ(server.port, "http://Example.org/env.cgi?x=1", [("Host", "other.invalid")])
    names = ("SERVER_NAME", "HTTP_HOST", "SCRIPT_NAME", "QUERY_STRING")
    assert {name: env.get(name) for name in names} == {
        "SERVER_NAME": "example.org",
        "HTTP_HOST": "Example.org",
        "SCRIPT_NAME": "/env.cgi",
        "QUERY_STRING": "x=1",
    }


@pytest.mark.parametrize("target", ["http:///env.cgi", "http://user@host/env.cgi"], ids=["no-host", "userinfo"])
def test_absolute_form_without_host_or_with_userinfo_is_400(server, target):
    """If an absolute-form target has no host, or has userinfo, the client gets 400."""
    response = request(server.port, "GET", target)
    assert response.status == 400
    assert_logged_once(server, f"[{response.header('X-Request-Id')}] 400 for ", "absolute target without a host, or with userinfo")
