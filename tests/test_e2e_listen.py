"""End to end: cgiserve on each kind of Twisted endpoint, and what its scripts learn about the connection."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import procfs
from tests.conftest import sh, write_script
from tests.http import Connection, build_request, wait_for
from tests.ops import PYTHON, SYSTEMD_LAUNCHER, free_port, self_signed
from tests.server import Server

# A script response several 64 KiB reads long: big enough for the big-response path.
BIG = os.urandom(5 * 1024 * 1024 + 3)
from tests.server import CHECKOUT, assert_clean_exit, assert_log_clean, exited

DUMP = f"""#!{PYTHON}
import json, os, sys
data = sys.stdin.buffer.read()
sys.stdout.write("Content-Type: application/json\\r\\n\\r\\n")
sys.stdout.write(json.dumps({{"env": dict(os.environ), "stdin_len": len(data)}}))
"""

# The variables that describe the connection.
_ENDS = ("REMOTE_ADDR", "REMOTE_PORT", "SERVER_ADDR", "SERVER_PORT", "SERVER_NAME", "HTTPS", "REQUEST_SCHEME")


@pytest.fixture(scope="module")
def top():
    top = Path(os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-listen-")))
    root = top / "root"
    root.mkdir()
    write_script(root, "env.py", DUMP)
    (root / "hello.txt").write_text("hello\n")
    # A big response (spliced on a plain socket, written by Python over TLS
    # and HTTP/2), without a Content-Length.
    (top / "big.bin").write_bytes(BIG)
    write_script(root, "big.sh", sh(f"printf 'Content-Type: application/octet-stream\\n\\n'\nexec cat {top}/big.bin"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def server(top):
    """Start a cgiserve on the module's root with the given --listen; stopped after the test."""
    servers = []

    def start(listen, *options, **kwargs):
        server = Server(top / "root", *options, listen=listen, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def ends(report: dict) -> dict:
    """The connection's variables in a dump script's report (absent ones as None)."""
    return {name: report["env"].get(name) for name in _ENDS}


def over(sock: socket.socket, request: bytes) -> tuple[int, dict]:
    """Send one request on a connected socket and return the status and the dump script's report."""
    with sock:
        sock.settimeout(15)
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        response.close()
    return response.status, json.loads(body) if response.status == 200 else body


def test_tcp4(server):
    """Over tcp: (IPv4) scripts see both addresses and ports, and the Host header's name."""
    cgiserve = server("tcp:0:interface=127.0.0.1")
    sock = socket.create_connection(("127.0.0.1", cgiserve.port))
    client_port = sock.getsockname()[1]
    status, report = over(sock, build_request("GET", "/env.py", port=cgiserve.port))
    assert status == 200
    assert ends(report) == {
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": str(client_port),
        "SERVER_ADDR": "127.0.0.1",
        "SERVER_PORT": str(cgiserve.port),
        "SERVER_NAME": "127.0.0.1",
        "HTTPS": None,
        "REQUEST_SCHEME": "http",
    }


def test_tcp6(server):
    """Over tcp6: on ::1 scripts see IPv6 addresses, and SERVER_NAME keeps an IPv6 literal's brackets."""
    cgiserve = server(r"tcp6:0:interface=\:\:1")
    sock = socket.create_connection(("::1", cgiserve.port))
    client_port = sock.getsockname()[1]
    status, report = over(sock, build_request("GET", "/env.py", [("Host", f"[::1]:{cgiserve.port}")]))
    assert status == 200
    assert ends(report) == {
        "REMOTE_ADDR": "::1",
        "REMOTE_PORT": str(client_port),
        "SERVER_ADDR": "::1",
        "SERVER_PORT": str(cgiserve.port),
        "SERVER_NAME": "[::1]",
        "HTTPS": None,
        "REQUEST_SCHEME": "http",
    }


def test_tcp6_without_host_header(server):
    """Over tcp6, an HTTP/1.0 request without Host gets the server's address, bracketed, as SERVER_NAME."""
    cgiserve = server(r"tcp6:0:interface=\:\:1")
    sock = socket.create_connection(("::1", cgiserve.port))
    status, report = over(sock, build_request("GET", "/env.py", version="HTTP/1.0", host=False))
    assert status == 200
    assert report["env"]["SERVER_NAME"] == "[::1]"


def test_unix_socket(server, top):
    """Over unix:, REMOTE_ADDR is 'unix:' (as nginx has it), SERVER_ADDR names the socket, the port comes from Host."""
    path = top / "cgiserve.sock"
    cgiserve = server(f"unix:{path}")
    assert cgiserve.ports == [str(path)]
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    status, report = over(sock, build_request("GET", "/env.py", [("Host", "www.example.test:8080")]))
    assert status == 200
    assert ends(report) == {
        "REMOTE_ADDR": "unix:",
        "REMOTE_PORT": None,
        "SERVER_ADDR": f"unix:{path}",
        "SERVER_PORT": "8080",
        "SERVER_NAME": "www.example.test",
        "HTTPS": None,
        "REQUEST_SCHEME": "http",
    }


def test_unix_socket_without_host_header(server, top):
    """Over unix:, an HTTP/1.0 request without Host runs its script with SERVER_NAME localhost and port 80."""
    path = top / "bare.sock"
    cgiserve = server(f"unix:{path}")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(cgiserve.ports[0]))
    status, report = over(sock, build_request("GET", "/env.py", version="HTTP/1.0", host=False))
    assert status == 200
    assert (report["env"]["SERVER_NAME"], report["env"]["SERVER_PORT"]) == ("localhost", "80")


def test_unix_socket_carries_a_big_response_whole(server, top):
    """Over unix:, a big script response (spliced into the socket) arrives byte for byte, chunked, and the connection serves on."""
    path = top / "big.sock"
    server(f"unix:{path}")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    with sock:
        for target in ("/big.sh", "/hello.txt"):
            sock.sendall(build_request("GET", target, [("Host", "localhost")]))
            response = http.client.HTTPResponse(sock)
            response.begin()
            body = response.read()
            assert response.status == 200
        assert body == b"hello\n"


def test_unix_socket_serves_static_files(server, top):
    """Over unix:, static files and directory redirects work too."""
    path = top / "static.sock"
    server(f"unix:{path}")
    for target, status in (("/hello.txt", 200), ("/", 200)):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(path))
        with sock:
            sock.sendall(build_request("GET", target, [("Host", "localhost")]))
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == status
            response.read()
            response.close()


needs_tls = pytest.mark.skipif(importlib.util.find_spec("OpenSSL") is None, reason="needs the tls extra")


@pytest.fixture(scope="module")
def certificate(top):
    return self_signed(top)


@pytest.fixture
def tls_server(server, certificate, top):
    key, cert = certificate
    access_log = top / f"access-{time.monotonic_ns()}.json"
    listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    cgiserve = server(listen, "--access-log", str(access_log), "--access-log-format", "json")
    cgiserve.access_log = access_log
    return cgiserve


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@needs_tls
def test_tls(tls_server):
    """Over ssl:, scripts see HTTPS=on and REQUEST_SCHEME=https, and HTTP/1.1 still works."""
    connection = http.client.HTTPSConnection("127.0.0.1", tls_server.port, context=_tls_context(), timeout=15)
    try:
        connection.request("POST", "/env.py", body=b"x" * 1000, headers={"Content-Type": "application/octet-stream"})
        response = connection.getresponse()
        report = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200
    env = report["env"]
    assert (env["HTTPS"], env["REQUEST_SCHEME"], env["SERVER_PROTOCOL"]) == ("on", "https", "HTTP/1.1")
    assert env["SERVER_PORT"] == str(tls_server.port)
    assert report["stdin_len"] == 1000


@needs_tls
def test_tls_carries_a_big_response_whole(tls_server):
    """Over ssl: a big script response (which cannot be spliced) arrives byte for byte, and the connection serves on."""
    connection = http.client.HTTPSConnection("127.0.0.1", tls_server.port, context=_tls_context(), timeout=15)
    try:
        connection.request("GET", "/big.sh")
        response = connection.getresponse()
        body = response.read()
        connection.request("GET", "/hello.txt")
        again = connection.getresponse().read()
    finally:
        connection.close()
    assert response.status == 200
    assert body == BIG
    assert again == b"hello\n"


def _curl_speaks_http2() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    return "HTTP2" in subprocess.run([curl, "-V"], capture_output=True, text=True).stdout.split()


needs_h2_curl = pytest.mark.skipif(
    not _curl_speaks_http2() or importlib.util.find_spec("h2") is None or importlib.util.find_spec("OpenSSL") is None,
    reason="needs the http2 extra and curl with HTTP/2",
)


def curl_command(*args: str) -> list[str]:
    """A curl command line that trusts any certificate, gives up after 15 s and ends its output with the HTTP version."""
    options = ["--silent", "--show-error", "--insecure", "--max-time", "15", "--write-out", "\n%{http_version}"]
    return ["curl", *options, *args]


def curl(*args: str) -> tuple[str, dict | bytes]:
    """Run curl and return the HTTP version it used and the body (parsed, if JSON)."""
    result = subprocess.run(curl_command(*args), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    body, _, version = result.stdout.rpartition(b"\n")
    try:
        return version.decode(), json.loads(body)
    except ValueError:
        return version.decode(), body


@needs_h2_curl
def test_http2_over_tls(tls_server):
    """A client that negotiates HTTP/2 over TLS gets it, and scripts see SERVER_PROTOCOL=HTTP/2."""
    version, report = curl("--http2", f"https://127.0.0.1:{tls_server.port}/env.py")
    assert version == "2"
    env = report["env"]
    assert (env["SERVER_PROTOCOL"], env["HTTPS"], env["REQUEST_SCHEME"]) == ("HTTP/2", "on", "https")


@needs_h2_curl
def test_http2_carries_a_big_response_whole(tls_server, top):
    """Over HTTP/2 a big script response arrives byte for byte."""
    out = top / "big-h2.out"
    result = subprocess.run(
        curl_command("--http2", "--output", str(out), f"https://127.0.0.1:{tls_server.port}/big.sh"), capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rpartition(b"\n")[2] == b"2"
    assert out.read_bytes() == BIG


@needs_h2_curl
def test_http2_post_reaches_script(tls_server, top):
    """A POST over HTTP/2 reaches the script whole, on stdin with its CONTENT_LENGTH."""
    upload = top / "upload.bin"
    upload.write_bytes(os.urandom(300_000))
    version, report = curl(
        "--http2",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        f"@{upload}",
        f"https://127.0.0.1:{tls_server.port}/env.py",
    )
    assert version == "2"
    assert report["env"]["REQUEST_METHOD"] == "POST"
    assert report["env"]["CONTENT_LENGTH"] == "300000"
    assert report["stdin_len"] == 300_000
    logged = wait_for(lambda: tls_server.access_log.exists() and tls_server.access_log.read_text())
    line = json.loads(logged)
    assert (line["protocol"], line["method"], line["bytes_in"], line["exit_code"]) == ("HTTP/2", "POST", 300_000, 0)


@needs_h2_curl
def test_http2_static_file(tls_server):
    """Static files are served over HTTP/2 as well."""
    version, body = curl("--http2", f"https://127.0.0.1:{tls_server.port}/hello.txt")
    assert (version, body) == ("2", b"hello\n")


@needs_h2_curl
def test_http2_request_in_progress_survives_shutdown(server, certificate, top):
    """On SIGTERM an HTTP/2 request whose script is still running gets its whole response, and then the server exits cleanly."""
    pid_file = top / f"late-{time.monotonic_ns()}.pid"
    late = sh(f"echo $$ > {pid_file}\nsleep 1.5\nprintf 'Content-Type: text/plain\\n\\nlate\\n'\n")
    write_script(top / "root", "late.sh", late)
    key, cert = certificate
    cgiserve = server(f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}", "--shutdown-grace", "6")
    client = subprocess.Popen(
        curl_command("--http2", "--include", f"https://127.0.0.1:{cgiserve.port}/late.sh"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        procfs.read_pid(pid_file)
        started = time.monotonic()
        cgiserve.process.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=20)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate(timeout=10)
    assert client.returncode == 0, err
    response, _, version = out.rpartition(b"\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert (head.split(b"\r\n")[0].split()[1], body, version) == (b"200", b"late\n", b"2"), out
    assert_clean_exit(exited(cgiserve, timeout=10), cgiserve)
    # Sooner than the grace: the server closed the drained connection, it did not wait the grace out.
    assert time.monotonic() - started < 6
    assert_log_clean(cgiserve)


def test_systemd_socket_activation(server):
    """With systemd:domain=INET:index=0 the server adopts the listening socket passed as fd 3 (LISTEN_FDS)."""
    cgiserve = server("systemd:domain=INET:index=0", launcher=[PYTHON, "-c", SYSTEMD_LAUNCHER])
    with Connection(cgiserve.port) as connection:
        response = connection.request("GET", "/env.py")
    assert response.status == 200
    report = json.loads(response.body)
    assert ends(report)["SERVER_PORT"] == str(cgiserve.port)
    assert "LISTEN_FDS" not in report["env"]


# -- cannot listen

TWISTD = [PYTHON, "-c", "from twisted.scripts.twistd import run; run()"]
_FAILS_SECONDS = 20
# A port below net.ipv4.ip_unprivileged_port_start (1024 by default) needs CAP_NET_BIND_SERVICE.
PRIVILEGED_PORT = 81
SETPRIV = shutil.which("setpriv")


def failed_start(top, listen, *, twistd_options=("-n", "--pidfile="), launcher=(), cwd=None, env=None):
    """Run a cgiserve on top/root that should stop by itself: its status and output (stderr merged into stdout)."""
    environment = dict(os.environ if env is None else env, PYTHONPATH=str(CHECKOUT))
    command = [*launcher, *TWISTD, *twistd_options, "cgiserve", "--root", str(top / "root"), "--listen", listen]
    # On timeout, run() kills the child and raises: the test fails, no process is left.
    return subprocess.run(
        command,
        cwd=cwd or top,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=_FAILS_SECONDS,
    )


def assert_one_line(written, line):
    """What twistd wrote (output, log) says why it stopped in one line ending in C{line}: no traceback, no usage."""
    assert "Traceback" not in written
    assert "Usage:" not in written
    mentions = [found for found in written.splitlines() if "cannot listen" in found]
    assert len(mentions) == 1 and mentions[0].endswith(line), written


@pytest.fixture
def busy_port():
    """A port of 127.0.0.1 that a socket of this process is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("logfile", [False, True], ids=["stdout", "logfile"])
def test_port_in_use(top, busy_port, logfile):
    """A port already in use stops twistd at once with one line, in its log: under -n stdout, or the --logfile."""
    listen = f"tcp:{busy_port}:interface=127.0.0.1"
    log = top / f"in-use-{busy_port}.log"
    options = ("-n", "--pidfile=", "--logfile", str(log)) if logfile else ("-n", "--pidfile=")
    result = failed_start(top, listen, twistd_options=options)
    assert result.returncode == 1
    written = result.stdout + (log.read_text() if logfile else "")
    assert_one_line(written, f"cgiserve: cannot listen on {listen}: address already in use")
    if logfile:
        assert "cannot listen" not in result.stdout


def test_port_in_use_removes_pid_file(top, busy_port):
    """A server that cannot listen removes the twistd.pid it wrote into its working directory."""
    cwd = Path(tempfile.mkdtemp(dir=top))
    result = failed_start(top, f"tcp:{busy_port}:interface=127.0.0.1", twistd_options=("-n",), cwd=cwd)
    assert result.returncode == 1
    assert_one_line(result.stdout, "address already in use")
    assert not (cwd / "twistd.pid").exists()


def test_port_in_use_daemon(top, busy_port):
    """Daemonized, a server that cannot listen makes the parent exit 1 with the reason; the log has the one line."""
    cwd = Path(tempfile.mkdtemp(dir=top))
    listen = f"tcp:{busy_port}:interface=127.0.0.1"
    log, pid_file = cwd / "daemon.log", cwd / "daemon.pid"
    try:
        result = failed_start(top, listen, twistd_options=("--pidfile", str(pid_file), "--logfile", str(log)), cwd=cwd)
        # The parent exits once told; the daemon writes its line as it exits, a moment later.
        wait_for(lambda: log.exists() and "cannot listen" in log.read_text())
    finally:
        if pid_file.exists():  # a daemon that did start would be left running
            with contextlib.suppress(ProcessLookupError):  # or it is gone, its pid file left behind
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert result.returncode == 1
    assert f"cannot listen on {listen}" in result.stdout
    assert_one_line(log.read_text(), f"cgiserve: cannot listen on {listen}: address already in use")
    assert not pid_file.exists()


def _unprivileged_launchers():
    """setpriv launchers without the right to bind a privileged port: as nobody, and as root without the capability."""
    as_nobody = [SETPRIV, "--reuid=65534", "--regid=65534", "--clear-groups"]
    without_capability = [SETPRIV, "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service"]
    return [pytest.param(as_nobody, id="nobody"), pytest.param(without_capability, id="no-CAP_NET_BIND_SERVICE")]


@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("launcher", _unprivileged_launchers())
def test_privileged_port_without_root(top, launcher):
    """Without the privilege, a port below 1024 stops twistd with one line: permission denied."""
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if start.exists() and int(start.read_text()) <= PRIVILEGED_PORT:
        pytest.skip(f"port {PRIVILEGED_PORT} needs no privilege here: ip_unprivileged_port_start is {start.read_text()}")
    probe = subprocess.run(
        [*launcher, PYTHON, "-c", "import cgiserve.tap"],
        cwd="/",
        env=dict(os.environ, PYTHONPATH=str(CHECKOUT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"{' '.join(launcher)} cannot import cgiserve with {PYTHON}: {probe.stderr.strip()[-300:]}")
    # Not under top, which only root may enter: a root and working directory user 65534 can enter too.
    public = Path(os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-listen-public-")))
    try:
        public.chmod(0o755)
        (public / "root").mkdir()
        listen = f"tcp:{PRIVILEGED_PORT}:interface=127.0.0.1"
        result = failed_start(public, listen, launcher=launcher)
    finally:
        shutil.rmtree(public, ignore_errors=True)
    assert result.returncode == 1
    assert_one_line(result.stdout, f"cgiserve: cannot listen on {listen}: permission denied")


def test_systemd_without_socket_is_one_line(top):
    """Outside systemd (no LISTEN_FDS), a systemd: endpoint stops twistd with one line, no usage text, no traceback."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LISTEN_")}
    result = failed_start(top, "systemd:domain=INET:index=0", env=env)
    assert result.returncode == 1
    assert_one_line(result.stdout, "cgiserve: cannot listen on systemd:domain=INET:index=0: systemd passed no such socket")


@needs_tls
def test_tls_missing_certificate(top):
    """An ssl: endpoint whose certificate file is missing stops twistd with one line naming the file, no usage text."""
    missing = top / "missing.pem"
    listen = f"ssl:0:interface=127.0.0.1:privateKey={missing}"
    result = failed_start(top, listen)
    assert result.returncode == 1
    assert_one_line(result.stdout, f"cgiserve: cannot listen on {listen}: {missing}: no such file or directory")


# -- behind HAProxy

HAPROXY = shutil.which("haproxy")
CONTRIB = Path(__file__).resolve().parent.parent / "contrib"


@pytest.fixture
def haproxy(top):
    """Start haproxy with a copy of contrib/haproxy.cfg whose ports are rewritten; stopped after the test."""
    if HAPROXY is None:
        if os.environ.get("CGISERVE_REQUIRE_HAPROXY") == "1":
            pytest.fail("haproxy is not installed but CGISERVE_REQUIRE_HAPROXY=1")
        pytest.skip("haproxy is not installed")
    processes = []

    def start(front: int, backends: list[int]) -> None:
        config = (CONTRIB / "haproxy.cfg").read_text().replace("127.0.0.1:8080", f"127.0.0.1:{front}")
        for default, port in zip((8001, 8002), backends):
            config = config.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
        path = top / f"haproxy-{front}.cfg"
        path.write_text(config)
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        processes.append(process)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read().decode(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("haproxy did not start listening")

    yield start
    for process in processes:
        process.terminate()
        process.communicate(timeout=10)


def test_behind_haproxy(server, haproxy):
    """Two instances on haproxy:tcp: behind contrib/haproxy.cfg both serve, and scripts see the real client."""
    instances = [
        server("haproxy:tcp:0:interface=127.0.0.1", "--set-env", f"CGISERVE_INSTANCE={name}") for name in ("one", "two")
    ]
    front = free_port()
    haproxy(front, [instance.port for instance in instances])
    seen = set()
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", front))
        client_port = sock.getsockname()[1]
        status, report = over(sock, build_request("GET", "/env.py", port=front))
        assert status == 200
        env = report["env"]
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("127.0.0.1", str(client_port))
        # The address the client connected to, as HAProxy reports it.
        assert env["SERVER_PORT"] == str(front)
        seen.add(env["CGISERVE_INSTANCE"])
    assert seen == {"one", "two"}
