"""The access log: its two formats as tables, its timing against fake requests, and real servers writing it."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cgiserve.accesslog import AccessLog, Entry, combined_line, json_line, with_script
from cgiserve.record import Recorder
from cgiserve.tap import Options
from tests.conftest import write_script
from tests.http import Connection, request, wait_for
from tests.server import Server

# 24 Nov 2026 23:42:14.250 UTC
STARTED = 1795563734.25

# What log analysers (GoAccess, AWStats, Apache's own tools) expect of a
# Combined Log Format line.
COMBINED = re.compile(
    r'(?P<host>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] '
    r'"(?P<request>(?:[^"\\]|\\.)*)" (?P<status>\d{3}) (?P<size>\d+|-) '
    r'"(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)"'
)


def entry(**changes) -> Entry:
    fields = dict(
        started=STARTED,
        seconds=0.0125,
        request_id="0123abcd",
        remote_addr="127.0.0.1",
        remote_user=None,
        method=b"GET",
        uri=b"/index.html",
        protocol=b"HTTP/1.1",
        status=200,
        bytes_in=0,
        bytes_out=1234,
        host=b"example.test",
        referer=None,
        user_agent=b"curl/8.0",
    )
    fields.update(changes)
    return Entry(**fields)


# -- Combined Log Format


@pytest.mark.parametrize(
    "changes, line",
    [
        ({}, '127.0.0.1 - - [24/Nov/2026:23:42:14 +0000] "GET /index.html HTTP/1.1" 200 1234 "-" "curl/8.0"'),
        (
            {"remote_user": "alice", "referer": b"http://example.test/", "bytes_out": 0, "status": 304},
            '127.0.0.1 - alice [24/Nov/2026:23:42:14 +0000] "GET /index.html HTTP/1.1" 304 - '
            '"http://example.test/" "curl/8.0"',
        ),
        (
            {"uri": b'/a"b\\c\xff\x01', "user_agent": b'say "hi"'},
            '127.0.0.1 - - [24/Nov/2026:23:42:14 +0000] "GET /a\\"b\\\\c\\xff\\x01 HTTP/1.1" 200 1234 '
            '"-" "say \\"hi\\""',
        ),
        (
            {"remote_addr": "", "user_agent": None, "remote_user": "bob smith"},
            '- - bob smith [24/Nov/2026:23:42:14 +0000] "GET /index.html HTTP/1.1" 200 1234 "-" "-"',
        ),
        (
            {"remote_addr": "::1"},
            '::1 - - [24/Nov/2026:23:42:14 +0000] "GET /index.html HTTP/1.1" 200 1234 "-" "curl/8.0"',
        ),
    ],
)
def test_combined_line(changes, line):
    """Entries become Apache's Combined Log Format, quotes and bytes escaped as Apache does."""
    assert combined_line(entry(**changes)) == line


@pytest.mark.parametrize("uri", [b"/plain", b'/"quoted"', b"/back\\slash", b"/\x00\x1f\x7f\xff", b"/ space"])
def test_combined_line_parses_as_combined(uri):
    """Whatever the request holds, the line still parses with the usual Combined Log Format pattern."""
    match = COMBINED.fullmatch(combined_line(entry(uri=uri, referer=uri, user_agent=uri)))
    assert match is not None
    assert match["status"] == "200"


# -- JSON


def test_json_line_fields():
    """A JSON line holds the request's facts, named and typed, and null script fields without a script."""
    record = json.loads(json_line(entry(bytes_in=10, remote_user="alice")))
    assert record == {
        "time": "2026-11-24T23:42:14.250+00:00",
        "request_id": "0123abcd",
        "remote_addr": "127.0.0.1",
        "remote_user": "alice",
        "method": "GET",
        "uri": "/index.html",
        "protocol": "HTTP/1.1",
        "host": "example.test",
        "status": 200,
        "bytes_in": 10,
        "bytes_out": 1234,
        "seconds": 0.0125,
        "completed": True,
        "referer": None,
        "user_agent": "curl/8.0",
        "script": None,
        "exit_code": None,
        "signal": None,
        "script_seconds": None,
        "stopped": None,
        "warm": None,
        "exec_reason": None,
        "limit": None,
    }


def test_json_line_is_one_line_of_ascii():
    """Bytes that are not UTF-8 show as \\xhh and a line holds no newline, whatever the request."""
    line = json_line(entry(uri=b"/caf\xc3\xa9/\xff\n", user_agent=b"x\r\ny"))
    assert "\n" not in line and line.isascii()
    assert json.loads(line)["uri"] == "/café/\\xff\n"


class _Run:
    """A stand-in for a running ScriptProtocol."""

    script = "/srv/www/app.py"
    pgid = 4242
    run_seconds = None
    stopped_because = None
    warm = False
    exec_reason = None
    limit_hit = None
    refused = False
    ended = False

    def __init__(self):
        self.done = Deferred()

    def end(self, status, seconds=1.5, why=None):
        self.run_seconds, self.stopped_because = seconds, why
        self.done.callback(status)


@pytest.mark.parametrize(
    "status, why, expected",
    [
        (ProcessDone(0), None, (0, None, None)),
        (ProcessTerminated(exitCode=3), None, (3, None, None)),
        (ProcessTerminated(signal=15), "timeout", (None, 15, "timeout")),
        (ProcessTerminated(signal=9), "client gone", (None, 9, "client gone")),
    ],
)
def test_with_script(status, why, expected):
    """How a script ended fills the script fields: exit code or signal, run time, and why it was stopped."""
    run = _Run()
    run.run_seconds, run.stopped_because = 2.5, why
    finished = with_script(entry(), run, status)
    assert (finished.exit_code, finished.signal, finished.stopped) == expected
    assert (finished.script, finished.script_seconds) == ("/srv/www/app.py", 2.5)


def test_with_script_names_the_limit_hit():
    """The limit that stopped a script reaches the JSON record's limit field; the combined line is unchanged."""
    run = _Run()
    run.limit_hit = "cpu"
    finished = with_script(entry(), run, ProcessTerminated(signal=24))
    assert json.loads(json_line(finished))["limit"] == "cpu"
    assert combined_line(finished) == combined_line(entry())


# -- the log and its requests


class _Request:
    """The parts of a cgiserve request that the access log reads."""

    remote_user = None
    script_run = None
    access_started = None
    access_logged = False
    head_written_at = None

    def __init__(self, client=None):
        self.request_id = "feedface"
        self.method, self.uri, self.clientproto = b"POST", b"/app.py", b"HTTP/1.1"
        self.code = 200
        self.sentLength = 0
        self.startedWriting = 0
        self.body_received = 5
        self.client = client or IPv4Address("TCP", "192.0.2.7", 50000)

    def getClientAddress(self):
        return self.client

    def getHeader(self, name):
        return {b"user-agent": b"test/1"}.get(name)

    def respond(self, data: bytes) -> None:
        self.startedWriting = 1
        self.sentLength += len(data)

    def lose_connection(self, recorder) -> None:
        """What cgiserve.site.Request.connectionLost does for a request the recorder watches."""
        if self.access_started is not None:
            recorder.request_ended(self, completed=False)


class AccessLogTests(SynchronousTestCase):
    def setUp(self):
        self.directory = Path(tempfile.mkdtemp(prefix="cgiserve-accesslog-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = self.directory / "access.log"
        self.reactor = MemoryReactorClock()
        self.reactor.advance(STARTED)
        self.log = AccessLog(str(self.path), "json")
        self.log.privilegedStartService()
        self.addCleanup(self.log.close)
        # What feeds the log its entries.
        self.recorder = Recorder([self.log], self.reactor)
        self.recorder.startService()

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def test_request_without_script(self):
        """A request that ran no script is written when it ends, timed from when it was watched."""
        request = _Request()
        self.recorder.watch(request)
        self.reactor.advance(0.5)
        request.respond(b"hello")
        self.recorder.request_ended(request)
        [line] = self.lines()
        self.assertEqual((line["status"], line["bytes_in"], line["bytes_out"], line["seconds"]), (200, 5, 5, 0.5))
        self.assertEqual((line["remote_addr"], line["request_id"], line["script"]), ("192.0.2.7", "feedface", None))
        self.assertEqual(line["time"], "2026-11-24T23:42:14.250+00:00")

    def test_waits_for_script_to_end(self):
        """A request whose script still runs after the response is written once the script ends, saying how."""
        request, run = _Request(), _Run()
        request.script_run = run
        self.recorder.watch(request)
        request.respond(b"partial")
        self.recorder.request_ended(request)
        self.assertEqual(self.path.read_text(), "")
        run.end(ProcessTerminated(exitCode=7), seconds=3.25)
        [line] = self.lines()
        self.assertEqual((line["script"], line["exit_code"], line["script_seconds"]), ("/srv/www/app.py", 7, 3.25))

    def test_script_already_ended(self):
        """A script that ended before its response did is written at once, with its exit."""
        request, run = _Request(), _Run()
        request.script_run = run
        run.end(ProcessDone(0), seconds=0.25)
        self.recorder.request_ended(request)
        [line] = self.lines()
        self.assertEqual((line["exit_code"], line["signal"], line["script_seconds"]), (0, None, 0.25))

    def test_script_that_never_started(self):
        """A script that never started (no slot) leaves nothing to wait for."""
        request, run = _Request(), _Run()
        run.pgid = None
        request.script_run = run
        request.code = 503
        self.recorder.request_ended(request)
        [line] = self.lines()
        self.assertEqual((line["status"], line["exit_code"]), (503, None))

    def test_client_gone_before_response(self):
        """A client that leaves before the response began is logged as 499, not completed, once its script ends."""
        request, run = _Request(), _Run()
        request.script_run = run
        self.recorder.watch(request)
        request.lose_connection(self.recorder)
        run.end(ProcessTerminated(signal=15), why="client gone")
        [line] = self.lines()
        self.assertEqual((line["status"], line["completed"]), (499, False))
        self.assertEqual((line["signal"], line["stopped"]), (15, "client gone"))

    def test_client_gone_during_response(self):
        """A client that leaves during the response keeps the status it was sent."""
        request = _Request()
        self.recorder.watch(request)
        request.respond(b"some of it")
        request.lose_connection(self.recorder)
        [line] = self.lines()
        self.assertEqual((line["status"], line["completed"], line["bytes_out"]), (200, False, 10))

    def test_unix_client(self):
        """A client on a unix socket is logged as 'unix:'."""
        request = _Request(UNIXAddress(None))
        self.recorder.request_ended(request)
        self.assertEqual(self.lines()[0]["remote_addr"], "unix:")

    def test_one_line_per_request(self):
        """Watching twice or ending twice still gives one line."""
        request = _Request()
        self.recorder.watch(request)
        self.recorder.watch(request)
        self.recorder.request_ended(request)
        self.recorder.request_ended(request)
        request.lose_connection(self.recorder)
        self.assertEqual(len(self.lines()), 1)

    def test_follows_log_rotation(self):
        """When log rotation moves the file away, the next line goes to a new file at the path."""
        self.recorder.request_ended(_Request())
        self.path.rename(self.directory / "access.log.1")
        self.recorder.request_ended(_Request())
        self.assertEqual(len(self.lines()), 1)
        self.assertEqual(len((self.directory / "access.log.1").read_text().splitlines()), 1)

    def test_closed_after_shutdown(self):
        """The file closes after the reactor has shut down, not before; later lines are dropped."""
        [(close, args, kwargs)] = self.reactor.triggers["after"]["shutdown"]
        self.recorder.request_ended(_Request())
        close(*args, **kwargs)
        self.assertIsNone(self.log.fd)
        self.recorder.request_ended(_Request())
        self.assertEqual(len(self.lines()), 1)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_costs_lines_not_requests():
    """When the log cannot be written (a full disk), requests go on and one error is logged, not one per line."""
    log = AccessLog("/dev/full")
    recorder = Recorder([log], MemoryReactorClock())
    with capturedLogs() as events:
        log.privilegedStartService()
        for _ in range(3):
            recorder.request_ended(_Request())
        log.close()
    errors = [event for event in events if event["log_level"] == LogLevel.error]
    assert len(errors) == 1
    assert "Cannot write to the access log /dev/full" in formatEvent(errors[0])


def test_combined_format_file(tmp_path):
    """The combined format writes Combined Log Format lines to the file."""
    log = AccessLog(str(tmp_path / "access.log"))
    log.privilegedStartService()
    try:
        Recorder([log], MemoryReactorClock()).request_ended(_Request())
    finally:
        log.close()
    line = (tmp_path / "access.log").read_text()
    assert COMBINED.fullmatch(line.rstrip("\n"))
    assert line.startswith('192.0.2.7 - - [01/Jan/1970:00:00:00 +0000] "POST /app.py HTTP/1.1" 200 - "-" "test/1"')


# -- options


@pytest.mark.parametrize(
    "args",
    [["--access-log", "/nonexistent/dir/access.log"], ["--access-log", "."], ["--access-log-format", "xml"]],
)
def test_bad_access_log_options(tmp_path, args):
    """An access log in a missing directory, a directory, or an unknown format is a usage error."""
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--root", str(tmp_path), *args])


# -- real servers


def sh(*lines: str) -> str:
    return "#!/bin/sh\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def root():
    top = Path(os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-accesslog-e2e-")))
    root = top / "root"
    root.mkdir()
    (root / "hello.txt").write_text("hello\n")
    write_script(root, "exit3.sh", sh("cat >/dev/null", "printf 'Content-Type: text/plain\\n\\nthree\\n'", "exit 3"))
    # Answers, closes its output, and only then finishes its work.
    linger = sh("printf 'Content-Type: text/plain\\n\\ndone\\n'", "exec >&-", "sleep 2", "exit 7")
    write_script(root, "linger.sh", linger)
    write_script(root, "sleep.sh", sh("sleep 30"))
    # Says it has started (in a file named after its query), then waits.
    write_script(root, "wait.sh", sh(': > "$DOCUMENT_ROOT/../started-$QUERY_STRING"', "sleep 30"))
    yield root
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def serve():
    """Start a cgiserve with these options; stopped after the test."""
    servers = []

    def start(*options, root):
        servers.append(Server(root, *options).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def log_path(root):
    path = root.parent / f"access-{time.monotonic_ns()}.log"
    yield path
    path.unlink(missing_ok=True)


def json_lines(path: Path, count: int = 1, timeout: float = 10) -> list[dict]:
    """The first C{count} JSON lines of the access log, once they are there."""
    def text():
        return path.exists() and len(path.read_text().splitlines()) >= count and path.read_text()

    lines = wait_for(text, timeout)
    assert lines, f"fewer than {count} lines in {path}"
    return [json.loads(line) for line in lines.splitlines()]


def test_combined_access_log(serve, root, log_path):
    """--access-log writes Combined Log Format lines for static files, scripts and errors alike."""
    server = serve("--access-log", str(log_path), root=root)
    request(server.port, "GET", "/hello.txt", [("Referer", "http://example.test/"), ("User-Agent", "tester/1.0")])
    request(server.port, "POST", "/exit3.sh", body=b"abc")
    request(server.port, "GET", "/missing")
    lines = wait_for(lambda: log_path.exists() and len(log_path.read_text().splitlines()) == 3 and log_path.read_text())
    parsed = [COMBINED.fullmatch(line) for line in lines.splitlines()]
    assert all(parsed), lines
    assert [(m["host"], m["request"], m["status"], m["size"]) for m in parsed] == [
        ("127.0.0.1", "GET /hello.txt HTTP/1.1", "200", "6"),
        ("127.0.0.1", "POST /exit3.sh HTTP/1.1", "200", "6"),
        ("127.0.0.1", "GET /missing HTTP/1.1", "404", parsed[2]["size"]),
    ]
    assert (parsed[0]["referer"], parsed[0]["agent"]) == ("http://example.test/", "tester/1.0")
    # Twisted's own access lines are not written as well.
    assert "GET /hello.txt" not in server.log()


def test_json_access_log_script_fields(serve, root, log_path):
    """A JSON line tells the request id, the script, its exit status and run time, and the bytes each way."""
    server = serve("--access-log", str(log_path), "--access-log-format", "json", root=root)
    response = request(server.port, "POST", "/exit3.sh", body=b"x" * 5000)
    [line] = json_lines(log_path)
    assert line["request_id"] == response.header("X-Request-Id")
    assert (line["method"], line["uri"], line["status"]) == ("POST", "/exit3.sh", 200)
    assert (line["script"], line["exit_code"], line["signal"]) == (str(root / "exit3.sh"), 3, None)
    assert line["stopped"] is None
    assert (line["bytes_in"], line["bytes_out"]) == (5000, len(b"three\n"))
    assert 0 < line["script_seconds"] < 10 and line["completed"] is True


def test_json_line_waits_for_script_exit(serve, root, log_path):
    """A script still running after its response is logged when it exits, with that exit."""
    server = serve("--access-log", str(log_path), "--access-log-format", "json", root=root)
    started = time.monotonic()
    response = request(server.port, "GET", "/linger.sh")
    assert response.body == b"done\n"
    # The response is in long before the script ends, and its line is not.
    assert time.monotonic() - started < 1.5
    assert log_path.read_text() == ""
    [line] = json_lines(log_path)
    assert (line["exit_code"], line["status"]) == (7, 200)
    assert line["script_seconds"] >= 1.5


def test_json_line_for_timeout(serve, root, log_path):
    """A script stopped by --timeout is logged with 504, the signal that ended it, and 'timeout'."""
    server = serve("--access-log", str(log_path), "--access-log-format", "json", "--timeout", "0.3", root=root)
    assert request(server.port, "GET", "/sleep.sh").status == 504
    [line] = json_lines(log_path)
    assert (line["status"], line["signal"], line["stopped"]) == (504, 15, "timeout")


def started(root: Path, name: str) -> bool:
    """Whether the run of wait.sh called C{name} has started."""
    return (root.parent / f"started-{name}").exists()


def test_json_line_for_client_gone(serve, root, log_path):
    """A client that leaves while its script runs is logged as 499, not completed, with 'client gone'."""
    server = serve("--access-log", str(log_path), "--access-log-format", "json", root=root)
    with Connection(server.port) as connection:
        connection.send(b"GET /wait.sh?gone HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: started(root, "gone"))
    [line] = json_lines(log_path)
    assert (line["status"], line["completed"], line["stopped"]) == (499, False, "client gone")
    assert line["signal"] == 15


def test_json_line_for_shutdown(root, log_path):
    """A script still running at shutdown is logged, with 503 and 'shutdown', before the server exits."""
    options = ("--access-log", str(log_path), "--access-log-format", "json", "--shutdown-grace", "0.2")
    with Server(root, *options) as server, Connection(server.port) as connection:
        connection.send(b"GET /wait.sh?shutdown HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: started(root, "shutdown"))
        server.stop()
    [line] = [json.loads(text) for text in log_path.read_text().splitlines()]
    assert (line["status"], line["stopped"]) == (503, "shutdown")


def test_access_log_to_stdout(serve, root):
    """--access-log - writes the lines to the server's standard output, not into its log."""
    server = serve("--access-log", "-", root=root)
    request(server.port, "GET", "/hello.txt")
    ready, _, _ = select.select([server.process.stdout], [], [], 10)
    assert ready
    line = server.process.stdout.readline().decode()
    assert COMBINED.fullmatch(line.rstrip("\n")), line
    assert '"GET /hello.txt HTTP/1.1" 200 6' in line
    assert "GET /hello.txt" not in server.log()


def test_no_access_lines_by_default(serve, root):
    """Without --access-log no access lines are written, not even to the server log."""
    server = serve(root=root)
    assert request(server.port, "GET", "/hello.txt").status == 200
    assert request(server.port, "GET", "/missing.txt").status == 404
    server.stop()
    assert "/hello.txt" not in server.log()
    assert "/missing.txt" not in server.log()
    assert "Server Shut Down." in server.log()


def test_access_log_in_root_is_not_served(serve, root):
    """An access log inside the document root is never served."""
    path = root / "access.log"
    try:
        server = serve("--access-log", str(path), root=root)
        assert request(server.port, "GET", "/access.log").status == 404
    finally:
        path.unlink(missing_ok=True)


def test_unix_socket_client(root, log_path):
    """A request over a unix socket is logged with 'unix:' as its client."""
    sock_path = root.parent / "access.sock"
    with Server(root, "--access-log", str(log_path), listen=f"unix:{sock_path}"):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(sock_path))
        with sock:
            sock.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
            while sock.recv(65536):
                pass
        lines = wait_for(lambda: log_path.exists() and log_path.read_text())
    assert lines.startswith("unix: - - [")
