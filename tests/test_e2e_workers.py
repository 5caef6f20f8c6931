"""End to end: --workers N, a master whose worker processes serve its sockets, replace one another and reload without a failed request."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import procfs
from tests.conftest import sh, write_script
from tests.http import Connection, build_request, refuses, request, wait_for
from tests.ops import PYTHON, SYSTEMD_LAUNCHER, self_signed
from tests.server import SERVING, Server, assert_clean_exit, assert_log_clean, exited, wait_log

# A worker's script reports the worker that spawned it.
PPID = sh('printf "Content-Type: text/plain\\r\\n\\r\\n%s\\n" "$PPID"')
# Sleeps as long as the query says, then reports its worker.
SLOW = sh('sleep "${QUERY_STRING:-1}"\nprintf "Content-Type: text/plain\\r\\n\\r\\n%s\\n" "$PPID"')
# Reports the connection as the script sees it, and its worker.
ENDS = sh(
    'printf "Content-Type: text/plain\\r\\n\\r\\n%s %s %s %s\\n" "$PPID" "$REMOTE_ADDR" "${HTTPS:-off}" "$SERVER_PROTOCOL"'
)
# Writes a line to stderr, for the server log.
NOISY = sh('echo "noisy script speaking" >&2\nprintf "Content-Type: text/plain\\r\\n\\r\\nok\\n"')


@pytest.fixture(scope="module")
def top():
    top = Path(os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-workers-")))
    root = top / "root"
    root.mkdir()
    (top / "running").mkdir()
    write_script(root, "ppid.cgi", PPID)
    write_script(root, "slow.cgi", SLOW)
    write_script(root, "ends.cgi", ENDS)
    write_script(root, "noisy.cgi", NOISY)
    # How many of its kind run at once, as each sees it after a pause.
    write_script(
        root,
        "running.cgi",
        sh(
            f'touch "{top}/running/$$"\nsleep 0.4\nn=$(ls "{top}/running" | wc -l)\nrm -f "{top}/running/$$"\n'
            'printf "Content-Type: text/plain\\r\\n\\r\\n%s\\n" "$n"'
        ),
    )
    (root / "hello.txt").write_text("hello\n")
    (root / "sub").mkdir()
    (root / "sub" / "a.txt").write_text("a\n")
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def workers(top):
    """Start a cgiserve with --workers 2 (and the given options) on the module's root; stopped after the test."""
    servers = []

    def start(*options, **kwargs):
        server = Server(top / "root", "--workers", "2", *options, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def get(port: int, target: str, headers=()) -> tuple[int, bytes]:
    response = request(port, "GET", target, headers)
    return response.status, response.body


def concurrently(count: int, call, *args) -> list:
    """The results of C{count} calls made at once."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: call(*args), range(count)))


def served_by(results) -> set[int]:
    """The worker pids that the scripts' bodies name."""
    return {int(body.split()[0]) for status, body in results if status == 200}


def spread(server: Server, target: str = "/slow.cgi?0.2", rounds: int = 5) -> set[int]:
    """The workers that served rounds of 8 requests made at once: every worker once one round has reached them all."""
    seen: set[int] = set()
    for _ in range(rounds):
        results = concurrently(8, get, server.port, target)
        assert [status for status, _ in results] == [200] * 8
        seen |= served_by(results)
        if seen >= server.worker_pids():
            break
    return seen


def serving_lines(server: Server) -> list[tuple[int, int]]:
    return [(int(number), int(pid)) for number, pid in SERVING.findall(server.log())]


def test_every_worker_serves_the_master_none(workers):
    """Requests spread over both workers; the master itself runs no script; the tutorial's files and listing still work."""
    server = workers()
    pids = server.worker_pids()
    assert len(pids) == 2
    assert spread(server) == pids
    assert server.process.pid not in pids
    assert get(server.port, "/hello.txt") == (200, b"hello\n")
    status, listing = get(server.port, "/sub/")
    assert status == 200 and b"a.txt" in listing
    assert_log_clean(server)


def test_the_log_says_which_worker_logged(workers):
    """A script's stderr line reaches the server log tagged with the worker that ran it."""
    server = workers()
    status, _ = get(server.port, "/noisy.cgi")
    assert status == 200
    log = wait_log(server, r"noisy script speaking")
    [line] = [line for line in log.splitlines() if "noisy script speaking" in line]
    number = int(re.search(r" worker (\d+)\]", line).group(1))
    assert number in {number for number, _ in serving_lines(server)}


def test_killed_worker_is_replaced_and_the_other_serves_on(workers):
    """SIGKILL one worker: the other's keep-alive connection goes on, new connections are served, a new worker takes the place."""
    server = workers()
    before = server.worker_pids()
    with Connection(server.port) as connection:
        response = connection.request("GET", "/ppid.cgi")
        keeper = int(response.body)
        [victim] = before - {keeper}
        os.kill(victim, signal.SIGKILL)
        for _ in range(10):
            response = connection.request("GET", "/ppid.cgi")
            assert (response.status, int(response.body)) == (200, keeper)
    for _ in range(10):
        assert get(server.port, "/hello.txt") == (200, b"hello\n")
    wait_log(server, rf"pid {victim}\) killed by SIGKILL; a new worker starts in its place")
    assert wait_for(lambda: len(serving_lines(server)) == 3, timeout=15), server.log()
    after = server.worker_pids()
    assert keeper in after and victim not in after and len(after) == 2
    assert spread(server) == after
    assert_log_clean(server)


def test_sigterm_drains_every_worker(workers):
    """SIGTERM: the ports close at once, every worker's running scripts finish and their responses arrive, then all exit."""
    server = workers("--shutdown-grace", "10")
    pids = server.worker_pids()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(get, server.port, "/slow.cgi?1.5") for _ in range(8)]
        running = wait_for(lambda: sum(len(procfs.children(pid)) for pid in pids) == 8, timeout=10)
        assert running, "the eight scripts did not start"
        busy = {pid for pid in pids if procfs.children(pid)}
        server.process.send_signal(signal.SIGTERM)
        refused = wait_for(lambda: refuses(server.port), timeout=3)
        results = [future.result(timeout=30) for future in futures]
    assert refused, "the port still accepted connections after SIGTERM"
    assert [status for status, _ in results] == [200] * 8
    assert served_by(results) == busy
    assert_clean_exit(exited(server, timeout=30), server)
    assert not server.worker_pids()
    log = server.log()
    for number, _ in serving_lines(server):
        assert f"[twisted.internet.base#info worker {number}] Received SIGTERM" in log
    assert "All workers stopped" in log
    assert "The master is gone" not in log
    assert_log_clean(server)


class Hammer:
    """
    Clients that request without a pause until stopped (at most C{limit}
    requests each, at most C{seconds}): some on a fresh connection each
    time, some on one kept alive. A kept-alive connection that the server
    closed while idle is opened again and its request sent again, as
    RFC 9112 9.3.1 allows for an idempotent request and as browsers do; any
    other error, and any status but 200, is a failure.
    """

    def __init__(self, port: int, fresh: int = 4, kept: int = 2, limit: int = 2000, seconds: float = 60) -> None:
        self.port = port
        self.limit = limit
        self.deadline = time.monotonic() + seconds
        self.stopping = threading.Event()
        self.failures: list[str] = []
        self.served: list[int] = []
        self.retries = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._fresh) for _ in range(fresh)]
        self._threads += [threading.Thread(target=self._kept) for _ in range(kept)]

    def __enter__(self) -> "Hammer":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _going(self, done: int) -> bool:
        return not self.stopping.is_set() and done < self.limit and time.monotonic() < self.deadline

    def _record(self, status: int, body: bytes, target: str) -> None:
        with self._lock:
            if status != 200:
                self.failures.append(f"{target}: {status} {body[:100]!r}")
            elif target == "/ppid.cgi":
                self.served.append(int(body))

    def _fail(self, error: Exception) -> None:
        with self._lock:
            self.failures.append(repr(error))

    def _fresh(self) -> None:
        for done in range(self.limit):
            if not self._going(done):
                return
            target = ("/ppid.cgi", "/hello.txt")[done % 2]
            try:
                status, body = get(self.port, target)
            except OSError as e:
                self._fail(e)
                continue
            self._record(status, body, target)

    def _kept(self) -> None:
        connection = None
        uses = 0
        for done in range(self.limit):
            if not self._going(done):
                break
            target = ("/ppid.cgi", "/hello.txt")[done % 2]
            for attempt in (1, 2):
                if connection is None:
                    connection, uses = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15), 0
                try:
                    connection.request("GET", target)
                    response = connection.getresponse()
                    body = response.read()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                    connection.close()
                    connection = None
                    if uses and attempt == 1:
                        with self._lock:
                            self.retries += 1
                        continue
                    self._fail(e)
                    break
                except OSError as e:
                    connection.close()
                    connection = None
                    self._fail(e)
                    break
                uses += 1
                self._record(response.status, body, target)
                if response.will_close:
                    connection.close()
                    connection = None
                break
        if connection is not None:
            connection.close()


def test_reload_under_load_fails_no_request(workers):
    """Two SIGHUPs while clients hammer the server: no refused connection, no failed request, and the new workers serve."""
    server = workers()
    first = server.worker_pids()
    with Hammer(server.port) as hammer:
        time.sleep(1)
        for reloads in (1, 2):
            server.process.send_signal(signal.SIGHUP)
            assert wait_for(lambda: server.log().count("Reloaded: ") == reloads, timeout=20), server.log()
            time.sleep(1)
    assert not hammer.failures, f"{len(hammer.failures)} failed: {hammer.failures[:5]}"
    assert len(hammer.served) > 100
    last = server.worker_pids()
    assert not last & first and len(last) == 2
    # The old workers served before the reloads, the last ones after.
    assert first & set(hammer.served) and last & set(hammer.served)
    assert len(serving_lines(server)) == 6
    assert_log_clean(server)


def test_limits_hold_for_the_whole_server(workers):
    """--max-scripts 2 with two workers: each worker has one slot, so at most two scripts run at once."""
    server = workers("--max-scripts", "2", "--max-queue", "16")
    commands = [procfs.cmdline(pid).split(b"\0") for pid in server.worker_pids()]
    for command in commands:
        assert command[command.index(b"--max-scripts", len(command) - 6) + 1] == b"1"
    results = concurrently(8, get, server.port, "/running.cgi")
    assert [status for status, _ in results] == [200] * 8
    assert max(int(body) for _, body in results) <= 2


def test_access_log_lines_are_whole_and_ids_unique(workers, top):
    """Long access-log lines from both workers at once: every one whole, every request id different."""
    access = top / f"access-{time.monotonic_ns()}.json"
    server = workers("--access-log", str(access), "--access-log-format", "json")
    # Each line is longer than PIPE_BUF and than the page a buffered write may split at.
    query = "q=" + "x" * 9000

    def many():
        return [get(server.port, f"/ppid.cgi?{query}") for _ in range(25)]

    results = [result for batch in concurrently(8, many) for result in batch]
    assert [status for status, _ in results] == [200] * 200
    assert served_by(results) == server.worker_pids()
    wait_for(lambda: len(access.read_bytes().splitlines()) >= 200, timeout=10)
    records = [json.loads(line) for line in access.read_bytes().splitlines()]
    assert len(records) == 200
    assert {record["uri"] for record in records} == {f"/ppid.cgi?{query}"}
    assert len({record["request_id"] for record in records}) == 200
    # Rotation: every worker follows the path to the new file.
    access.rename(access.with_suffix(".1"))
    assert spread(server, "/ppid.cgi?after") == server.worker_pids()
    assert wait_for(lambda: access.exists() and len(access.read_bytes().splitlines()) % 8 == 0, timeout=10)
    assert {json.loads(line)["uri"] for line in access.read_bytes().splitlines()} == {"/ppid.cgi?after"}
    assert len(access.with_suffix(".1").read_bytes().splitlines()) == 200


def test_access_log_on_standard_output_comes_whole_through_the_master(top):
    """With --access-log -, the workers' lines reach the master's standard output whole."""
    query = "q=" + "y" * 6000
    server = Server(top / "root", "--workers", "2", "--access-log", "-").start()
    out = bytearray()
    reader = threading.Thread(target=lambda: out.extend(server.process.stdout.read()))
    reader.start()
    try:
        results = concurrently(8, lambda: [get(server.port, f"/ppid.cgi?{query}") for _ in range(10)])
    finally:
        server.process.send_signal(signal.SIGTERM)
        reader.join(timeout=30)
        exited(server, timeout=30)
    assert all(status == 200 for batch in results for status, _ in batch)
    lines = [line for line in bytes(out).splitlines() if b"/ppid.cgi" in line]
    assert len(lines) == 80
    pattern = re.compile(rb'^127\.0\.0\.1 - - \[[^]]+\] "GET /ppid\.cgi\?' + query.encode() + rb' HTTP/1\.1" 200 \d+ "-" "-"$')
    assert all(pattern.match(line) for line in lines), lines[0][:200]


def test_master_gone_takes_its_workers(workers):
    """A master killed outright: its workers notice, stop, and the port is closed, no process left."""
    server = workers()
    tracked = [procfs.Tracked.of(pid) for pid in server.worker_pids()]
    server.process.kill()
    exited(server)
    assert not procfs.gone(*tracked, timeout=10)
    assert refuses(server.port)


# -- every kind of endpoint


def _unix_get(path: Path, target: str) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(15)
        sock.connect(str(path))
        sock.sendall(build_request("GET", target, [("Host", "localhost")]))
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


def test_unix_socket_survives_reloads_and_goes_with_the_master(workers, top):
    """On unix:, both workers serve, the socket stays through a reload (no worker removes it), and the master removes it at exit."""
    path = top / "workers.sock"
    server = workers(listen=f"unix:{path}:mode=660")
    mode = path.stat().st_mode & 0o777
    seen = set()
    for _ in range(5):
        seen |= served_by(concurrently(8, _unix_get, path, "/ends.cgi"))
        if seen == server.worker_pids():
            break
    assert seen == server.worker_pids()
    server.process.send_signal(signal.SIGHUP)
    wait_log(server, "Reloaded: ", timeout=20)
    assert wait_for(lambda: not seen & server.worker_pids(), timeout=20)
    assert path.exists() and path.stat().st_mode & 0o777 == mode == 0o660
    status, body = _unix_get(path, "/ends.cgi")
    assert status == 200 and int(body.split()[0]) in server.worker_pids()
    server.stop()
    assert not path.exists()


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _tls_get(port: int, target: str) -> tuple[int, bytes, bytes]:
    """A request over TLS: status, body, and the sha256 of the certificate the server showed."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=_tls_context(), timeout=15)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        body = response.read()
        certificate = connection.sock.getpeercert(binary_form=True)
    finally:
        connection.close()
    return response.status, body, hashlib.sha256(certificate).digest()


def test_tls_and_http2_in_each_worker_and_certificates_read_on_reload(workers, top):
    """On ssl:, every worker speaks TLS and HTTP/2; after the certificate changes on disk, SIGHUP brings the new one."""
    directory = top / f"tls-{time.monotonic_ns()}"
    directory.mkdir()
    key, cert = self_signed(directory)
    server = workers(listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    results = concurrently(8, _tls_get, server.port, "/ends.cgi")
    assert {(status, body.split()[2]) for status, body, _ in results} == {(200, b"on")}
    [old_certificate] = {certificate for _, _, certificate in results}
    if shutil.which("curl"):
        out = subprocess.run(
            ["curl", "-sk", "--http2", "--max-time", "15", f"https://127.0.0.1:{server.port}/ends.cgi"],
            capture_output=True,
            timeout=30,
        ).stdout
        assert out.split()[1:] == [b"127.0.0.1", b"on", b"HTTP/2"]
    fresh = top / f"tls-new-{time.monotonic_ns()}"
    fresh.mkdir()
    new_key, new_cert = self_signed(fresh)
    shutil.copy(new_key, key)
    shutil.copy(new_cert, cert)
    server.process.send_signal(signal.SIGHUP)
    wait_log(server, "Reloaded: ", timeout=20)
    assert wait_for(lambda: _tls_get(server.port, "/hello.txt")[2] != old_certificate, timeout=10)
    new_certificate = _tls_get(server.port, "/hello.txt")[2]
    assert wait_for(lambda: len(server.worker_pids()) == 2, timeout=10)
    serving = server.worker_pids()
    # A broken key on disk: the new workers cannot start, the old ones go on.
    key.write_text("not a key\n")
    server.process.send_signal(signal.SIGHUP)
    wait_log(server, r"Reload failed: Worker \d+ \(pid \d+\) exited with status 1 before it served", timeout=20)
    assert server.worker_pids() == serving
    for _ in range(6):
        assert _tls_get(server.port, "/hello.txt")[:2] == (200, b"hello\n")
    assert _tls_get(server.port, "/hello.txt")[2] == new_certificate


def test_tcp6(workers):
    """On tcp6:, both workers serve ::1."""
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    server = workers(listen="tcp6:0:interface=\\:\\:1")

    def get6():
        connection = http.client.HTTPConnection("::1", server.port, timeout=15)
        try:
            connection.request("GET", "/ends.cgi")
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    results = concurrently(8, get6)
    assert {(status, body.split()[1]) for status, body in results} == {(200, b"::1")}
    assert served_by(results) <= server.worker_pids()


def test_systemd_socket_is_shared(workers):
    """On systemd:, the socket systemd passed the master is what every worker serves."""
    server = workers(listen="systemd:domain=INET:index=0", launcher=[PYTHON, "-c", SYSTEMD_LAUNCHER])
    assert spread(server, "/ends.cgi") == server.worker_pids()


def test_haproxy_proxy_protocol_in_each_worker(workers):
    """Behind haproxy:, each worker reads the PROXY header: scripts see the client it names."""
    server = workers(listen="haproxy:tcp:0:interface=127.0.0.1")

    def proxied():
        with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
            sock.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\n" + build_request("GET", "/ends.cgi", port=80))
            response = http.client.HTTPResponse(sock)
            response.begin()
            return response.status, response.read()

    seen = set()
    for _ in range(5):
        results = concurrently(8, proxied)
        assert {(status, body.split()[1]) for status, body in results} == {(200, b"192.0.2.7")}
        seen |= served_by(results)
        if seen == server.worker_pids():
            break
    assert seen == server.worker_pids()


def test_each_worker_has_its_own_warm_helper(workers, top):
    """With --warm-python, every worker starts a helper of its own, and Python scripts start warm from it."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        pytest.skip(f"no {python}")
    write_script(
        top / "root",
        "parent.py",
        f"#!{python}\nimport os\nprint('Content-Type: text/plain')\nprint()\nprint(os.getppid())\n",
    )
    access = top / f"access-warm-{time.monotonic_ns()}.json"
    server = workers("--warm-python", python, "--access-log", str(access), "--access-log-format", "json")
    assert wait_for(lambda: server.log().count("self-test passed") == 2, timeout=30), server.log()
    helpers = {worker: procfs.children_running(worker, b"warm_helper") for worker in server.worker_pids()}
    assert all(len(pids) == 1 for pids in helpers.values()), helpers
    every_helper = set().union(*helpers.values())
    seen = set()
    for _ in range(5):
        results = concurrently(8, get, server.port, "/parent.py")
        assert [status for status, _ in results] == [200] * 8
        seen |= {int(body) for _, body in results}
        if seen == every_helper:
            break
    assert seen == every_helper
    wait_for(lambda: access.exists() and len(access.read_bytes().splitlines()) >= len(seen), timeout=10)
    assert all(json.loads(line)["warm"] for line in access.read_bytes().splitlines())
