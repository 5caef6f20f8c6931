"""End to end: --warm-python serves Python scripts from a preloaded helper, observably (pids, access log) and otherwise exactly as exec."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests import procfs
from tests.conftest import sh, sha256_script, write_script
from tests.http import Connection, MiB, connect, recv_until, request, unsent_stalls
from tests.ops import read_json_lines
from tests.procfs import Pids, Tracked, gone, wait_until
from tests.server import MARGIN_SECONDS, Server, assert_clean_exit, assert_log_clean, exited, wait_log

PYTHON3 = "/usr/bin/python3"
# What /usr/bin/python3 is a symlink to (Debian 12's): the --interpreter
# mapping resolves python3 to it, and for the server it is another interpreter.
PYTHON3_REAL = os.path.realpath(PYTHON3)

# The scripts' PATH (cgiserve's fixed one), given to the servers too so that
# --interpreter .wpy=python3 resolves to /usr/bin/python3, not to a shim.
SERVER_PATH = "/usr/local/bin:/usr/bin:/bin"


def _unsupported() -> str | None:
    if not os.access(PYTHON3, os.X_OK) or PYTHON3_REAL == PYTHON3:
        return f"needs {PYTHON3} as a symlink to an interpreter"
    if shutil.which("python3", path=SERVER_PATH) != PYTHON3:
        return f"needs python3 on {SERVER_PATH} to be {PYTHON3}"
    from cgiserve import warm

    return warm.supported()


_UNSUPPORTED = _unsupported()
pytestmark = pytest.mark.skipif(_UNSUPPORTED is not None, reason=str(_UNSUPPORTED))

# Everything a script can see of how it was started, minus what differs
# between two servers (ports, the request id): JSON, its pid and its
# parent's in headers.
REPORT = r'''
import json, os, sys
VARYING = ("SERVER_PORT", "HTTP_HOST", "REMOTE_PORT", "REQUEST_ID")
report = {
    "argv": sys.argv,
    "orig_argv": sys.orig_argv,
    "executable": sys.executable,
    "prefix": sys.prefix,
    "file": __file__,
    "name": __name__,
    "path": sys.path,
    "cwd": os.getcwd(),
    "flags": str(sys.flags),
    "env": {name: value for name, value in os.environ.items() if name not in VARYING},
    "stdio": [[s.encoding, s.errors, s.line_buffering, s.write_through] for s in (sys.stdin, sys.stdout, sys.stderr)],
}
sys.stdout.write(
    "Content-Type: application/json\r\n"
    f"X-Pid: {os.getpid()}\r\nX-Ppid: {os.getppid()}\r\nX-Env-Request-Id: {os.environ.get('REQUEST_ID')}\r\n\r\n"
)
sys.stdout.write(json.dumps(report, sort_keys=True))
'''

SHA256 = sha256_script(PYTHON3)

# Reports what earlier requests would have left behind, then leaves it:
# a changed preloaded module (json), os.environ, sys.path.
ISOLATION = f"""#!{PYTHON3}
import json, os, sys
seen = {{
    "json_attribute": hasattr(json, "cgiserve_mark"),
    "json_dumps": json.dumps([1]),
    "environ": os.environ.get("CGISERVE_MARK"),
    "path": "/cgiserve-mark" in sys.path,
}}
sys.stdout.write("Content-Type: application/json\\r\\n\\r\\n" + json.dumps(seen))
json.cgiserve_mark = True
json.dumps = lambda *args, **kwargs: "tampered"
os.environ["CGISERVE_MARK"] = "left by an earlier request"
sys.path.append("/cgiserve-mark")
"""


def sleeper(pids: Path, name: str, head: str = "") -> str:
    """
    A warm script that prints C{head} (flushed), starts C{sleep 60} as a
    child, writes the child's pid then its own to files, and sleeps, with
    Python's default SIGTERM handling (it dies of it).
    """
    return f"""#!{PYTHON3}
import os, subprocess, sys, time
sys.stdout.write({head!r})
sys.stdout.flush()
child = subprocess.Popen(["sleep", "60"])
with open("{pids}/{name}.child", "w") as f:
    f.write(f"{{child.pid}}\\n")
with open("{pids}/{name}", "w") as f:
    f.write(f"{{os.getpid()}}\\n")
time.sleep(60)
"""


def waiter(pids: Path, name: str, then: str) -> str:
    """A warm script that writes its pid to a file, waits (at most 20 s) for the test to create the file C{name}.go, then runs C{then}."""
    return f"""#!{PYTHON3}
import os, sys, time
with open("{pids}/{name}", "w") as f:
    f.write(f"{{os.getpid()}}\\n")
for _ in range(2000):
    if os.path.exists("{pids}/{name}.go"):
        break
    time.sleep(0.01)
{then}
"""


def build_docroot(root: Path, pids: Path, venv: Path) -> None:
    """The report under every kind of interpreter line, and the scripts of each behaviour."""
    write_script(root, "report.py", f"#!{PYTHON3}\n" + REPORT)
    write_script(root, "report-env.py", "#!/usr/bin/env python3\n" + REPORT)
    write_script(root, "report-options.py", f"#!{PYTHON3} -u\n" + REPORT)
    write_script(root, "report-venv.py", f"#!{venv}/bin/python\n" + REPORT)
    # Run by its --interpreter mapping (.wpy=python3): no #! line, no exec bit.
    write_script(root, "report.wpy", REPORT, mode=0o644)
    # The kernel would run /nonexistent/env, which does not exist.
    write_script(root, "report-bad-env.py", "#!/nonexistent/env python3\n" + REPORT)
    write_script(root, "report.sh", sh("printf 'Content-Type: text/plain\\nX-Ppid: %s\\n\\nshell\\n' \"$PPID\"\n"))
    # A binary, no #! line: echoes the POSTed body, which is a CGI response.
    shutil.copy("/bin/cat", root / "cat.cgi")
    write_script(root, "hello.py", (Path(__file__).resolve().parent.parent / "examples" / "hello.py").read_text())
    write_script(root, "sha.py", SHA256)
    write_script(root, "isolation.py", ISOLATION)
    write_script(
        root,
        "stderr.py",
        f"#!{PYTHON3}\nimport sys\nsys.stderr.write('warm stderr one\\nwarm stderr two\\n')\n"
        "sys.stdout.write('Content-Type: text/plain\\r\\n\\r\\nok')\n",
    )
    write_script(
        root, "exit3.py", f"#!{PYTHON3}\nimport sys\nsys.stdout.write('Content-Type: text/plain\\r\\n\\r\\nbye')\nsys.exit(3)\n"
    )
    write_script(root, "timeout.py", sleeper(pids, "timeout"))
    write_script(root, "gone.py", sleeper(pids, "gone", "Content-Type: text/plain\r\n\r\npartial"))
    write_script(root, "late.py", waiter(pids, "late", 'sys.stdout.write("Content-Type: text/plain\\r\\n\\r\\nfinished after the shutdown began")'))
    write_script(root, "pressure.py", waiter(pids, "pressure", SHA256.partition("\n")[2]))


# -- servers


def access_path(server: Server) -> Path:
    return Path(str(server.log_path) + ".access")


def launch(top: Path, *options: str, warm=(PYTHON3,), env=None, extra_env=None) -> Server:
    """
    A server on the shared root with a JSON access log, warming each of
    C{warm}, once each helper has passed its self-test.
    """
    fd, log = tempfile.mkstemp(prefix="cgiserve-warm-", suffix=".log", dir=top)
    os.close(fd)
    env = dict(os.environ if env is None else env, PATH=SERVER_PATH, **(extra_env or {}))
    warm_options = [option for interpreter in warm for option in ("--warm-python", interpreter)]
    access = ["--access-log", log + ".access", "--access-log-format", "json"]
    server = Server(top / "root", *warm_options, *access, *options, env=env, log_path=log).start()
    try:
        for interpreter in warm:
            wait_log(server, rf"Warm Python {re.escape(interpreter)}: self-test passed", timeout=20)
    except AssertionError:
        stop(server)
        raise
    return server


def helper_pids(server: Server, interpreter: str = PYTHON3) -> list[int]:
    """The pids of every helper the server has started for C{interpreter}, in order."""
    return [int(pid) for pid in re.findall(rf"Warm Python {re.escape(interpreter)}: helper (\d+) starting", server.log())]


def stop(server: Server) -> None:
    """Stop the server; SIGKILL any helper it leaves running (reported by the shutdown test, not here)."""
    helpers = [Tracked.of(pid) for pid in set(helper_pids(server)) | set(helper_pids(server, PYTHON3_REAL))]
    server.stop(within=10)
    for helper in gone(*[h for h in helpers if h is not None], timeout=5):
        try:
            os.kill(helper.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def record(server: Server, response) -> dict:
    """The access-log record of a response's request, once its script has ended (the log is written then)."""
    request_id = response.header("X-Request-Id")
    assert request_id, response.raw[:500]
    return record_of(server, request_id)


def record_of(server: Server, request_id: str) -> dict:
    """The access-log record of the request C{request_id}, once its script has ended."""

    def find():
        try:
            records = read_json_lines(access_path(server))
        except ValueError:  # a line being written
            return None
        return next((r for r in records if r["request_id"] == request_id), None)

    found = wait_until(find, 5)
    assert found, f"no access-log record for {request_id}:\n{access_path(server).read_text()[-2000:]}"
    return found


def get(server: Server, target: str, **kwargs):
    response = request(server.port, "GET", target, **kwargs)
    assert response.status == 200, f"{response.raw[:2000]!r}\n{server.log()[-3000:]}"
    return response


def assert_warm(server: Server, response, interpreter: str = PYTHON3) -> dict:
    """The request was served warm: so says its log record, and the script's parent is the current helper."""
    entry = record(server, response)
    assert (entry["warm"], entry["exec_reason"]) == (True, None), entry
    if response.header("X-Ppid") is not None:
        assert int(response.header("X-Ppid")) == helper_pids(server, interpreter)[-1]
    return entry


def assert_exec(server: Server, response, reason: str) -> dict:
    """The request was exec'd for C{reason} (a part of it): so says its log record; the script's parent is the server."""
    entry = record(server, response)
    assert entry["warm"] is False, entry
    assert reason in (entry["exec_reason"] or ""), entry
    if response.header("X-Ppid") is not None:
        assert int(response.header("X-Ppid")) == server.process.pid
    return entry


@pytest.fixture(scope="module")
def top():
    top = Path(os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-e2e-warm-")))
    (top / "root").mkdir()
    (top / "pids").mkdir()
    venv = top / "venv"
    subprocess.run([PYTHON3, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60, capture_output=True)
    build_docroot(top / "root", top / "pids", venv)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def root(top):
    return top / "root"


@pytest.fixture
def pids(top):
    tracker = Pids(top / "pids")
    yield tracker
    tracker.cleanup()


@pytest.fixture(scope="module")
def server(top):
    """Warms /usr/bin/python3; maps .wpy to python3 (/usr/bin/python3.11)."""
    server = launch(top, "--interpreter", ".wpy=python3", "--timeout", "30", "--kill-grace", "1")
    yield server
    stop(server)


@pytest.fixture(scope="module")
def exec_server(top):
    """The same site without --warm-python: every script is exec'd."""
    server = launch(top, "--interpreter", ".wpy=python3", warm=())
    yield server
    stop(server)


@pytest.fixture(scope="module")
def real_path_server(top):
    """Warms /usr/bin/python3.11, the real path that --interpreter .wpy=python3 resolves to."""
    server = launch(top, "--interpreter", ".wpy=python3", warm=(PYTHON3_REAL,))
    yield server
    stop(server)


@pytest.fixture(scope="module")
def timeout_server(top):
    server = launch(top, "--timeout", "1", "--kill-grace", "1")
    yield server
    stop(server)


@pytest.fixture(scope="module")
def python_env_server(top):
    """Started with PYTHONPATH and PYTHONDONTWRITEBYTECODE in its own environment."""
    extra = {"PYTHONPATH": str(top / "server-site"), "PYTHONDONTWRITEBYTECODE": "1"}
    server = launch(top, extra_env=extra)
    yield server
    stop(server)


@pytest.fixture(scope="module")
def set_env_server(top):
    server = launch(top, "--set-env", "PYTHONPATH=/x")
    yield server
    stop(server)


@pytest.fixture(scope="module")
def lifecycle_server(top):
    """For the tests that kill or restart its helper: each waits for a warm start first and leaves one."""
    server = launch(top)
    yield server
    stop(server)


def until_warm(server: Server, timeout: float = 10):
    """Request the report until one is served warm (the helper is ready); that response."""

    def warm():
        response = get(server, "/report.py")
        return response if record(server, response)["warm"] else None

    response = wait_until(warm, timeout, interval=0.1)
    assert response, f"no warm start within {timeout} s:\n{server.log()[-3000:]}"
    return response


# -- warm, and the same as exec


@pytest.mark.parametrize("script", ["report.py", "report-env.py"], ids=["python3", "env-python3"])
def test_warm_body_same_as_exec(server, exec_server, script):
    """A #!/usr/bin/python3 or #!/usr/bin/env python3 script is served warm with exactly the body it gives when exec'd."""
    warm = get(server, f"/{script}")
    assert_warm(server, warm)
    fresh = get(exec_server, f"/{script}")
    assert int(fresh.header("X-Ppid")) == exec_server.process.pid
    assert json.loads(warm.body) == json.loads(fresh.body)
    assert warm.body == fresh.body


def test_warm_child_per_request_forked_by_helper(server):
    """Each warm request runs in a new process whose parent is the helper (itself the server's child), not the server."""
    first, second = get(server, "/report.py"), get(server, "/report.py")
    helper = helper_pids(server)[-1]
    assert first.header("X-Pid") != second.header("X-Pid")
    assert int(first.header("X-Ppid")) == int(second.header("X-Ppid")) == helper
    assert helper != server.process.pid
    assert procfs.stat(helper).ppid == server.process.pid


def test_warm_request_id_in_environment(server):
    """A warm script's REQUEST_ID is the request's X-Request-Id."""
    response = get(server, "/report.py")
    assert_warm(server, response)
    assert response.header("X-Env-Request-Id") == response.header("X-Request-Id")


# -- which scripts exec, and why


@pytest.mark.parametrize(
    ("script", "reason", "check"),
    [
        ("report-options.py", "its #! line has interpreter options", lambda r: json.loads(r.body)["stdio"][1][3] is True),
        ("report.sh", "/bin/sh is not a --warm-python interpreter", lambda r: r.body == b"shell\n"),
        (
            "report.wpy",
            f"{PYTHON3_REAL} is not a --warm-python interpreter",
            lambda r: json.loads(r.body)["orig_argv"][0] == PYTHON3_REAL,
        ),
        ("report-venv.py", "/venv/bin/python is not a --warm-python interpreter", lambda r: json.loads(r.body)["prefix"].endswith("/venv")),
    ],
    ids=["options", "shell", "mapped-real-path", "venv"],
)
def test_exec_reason(server, script, reason, check):
    """A script whose interpreter is not exactly a --warm-python one, or that has #! options, is exec'd, its access-log record saying why."""
    response = get(server, f"/{script}")
    assert check(response), response.body[:2000]
    assert_exec(server, response, reason)


def test_exec_reason_no_shebang(server):
    """A binary without a #! line is exec'd, logged with the reason "no #! line"."""
    body = b"Content-Type: text/plain\r\n\r\nmeow"
    response = request(server.port, "POST", "/cat.cgi", [("Content-Type", "text/plain")], body)
    assert (response.status, response.body) == (200, b"meow")
    assert_exec(server, response, "no #! line")


def test_missing_env_program_fails_as_exec(server, exec_server):
    """A #!/nonexistent/env python3 script fails as its exec fails (502), and is never served warm."""
    assert request(exec_server.port, "GET", "/report-bad-env.py").status == 502
    assert request(server.port, "GET", "/report-bad-env.py").status == 502


def test_mapped_script_warm_under_its_real_path(real_path_server, exec_server):
    """With --warm-python /usr/bin/python3.11, a script mapped by --interpreter .wpy=python3 is warm, with the body exec gives it."""
    warm = get(real_path_server, "/report.wpy")
    assert_warm(real_path_server, warm, PYTHON3_REAL)
    fresh = get(exec_server, "/report.wpy")
    assert warm.body == fresh.body


def test_symlink_name_not_warm_for_real_path(real_path_server):
    """With --warm-python /usr/bin/python3.11, a #!/usr/bin/python3 script (a symlink to it) is another interpreter and is exec'd."""
    response = get(real_path_server, "/report.py")
    assert_exec(real_path_server, response, f"{PYTHON3} is not a --warm-python interpreter")


# -- start-up variables


def helper_environ(server: Server) -> dict[bytes, bytes]:
    with open(f"/proc/{helper_pids(server)[-1]}/environ", "rb") as f:
        return dict(entry.split(b"=", 1) for entry in f.read().split(b"\0") if b"=" in entry)


def test_server_python_variables_reach_neither_helper_nor_scripts(python_env_server, top):
    """A server with PYTHONPATH and PYTHONDONTWRITEBYTECODE in its own environment still serves warm, and neither the helper nor the script has them."""
    response = get(python_env_server, "/report.py")
    assert_warm(python_env_server, response)
    report = json.loads(response.body)
    assert "PYTHONPATH" not in report["env"] and "PYTHONDONTWRITEBYTECODE" not in report["env"]
    assert "dont_write_bytecode=0" in report["flags"]
    assert str(top / "server-site") not in report["path"]
    assert not {b"PYTHONPATH", b"PYTHONDONTWRITEBYTECODE"} & set(helper_environ(python_env_server))


def test_set_env_pythonpath_shared_by_helper_and_scripts(set_env_server):
    """With --set-env PYTHONPATH=/x the helper and the scripts both have it: scripts start warm, /x on their sys.path."""
    response = get(set_env_server, "/report.py")
    assert_warm(set_env_server, response)
    report = json.loads(response.body)
    assert report["env"]["PYTHONPATH"] == "/x"
    assert "/x" in report["path"]
    assert helper_environ(set_env_server)[b"PYTHONPATH"] == b"/x"


# -- the same behaviour as exec


def test_warm_timeout_kills_group(timeout_server, pids):
    """A warm script still running at --timeout 1 gets its client a 504, and its process group (it and its child) SIGTERM; logged as signal 15, "timeout"."""
    started = time.monotonic()
    with Connection(timeout_server.port) as connection:
        connection.send(b"GET /timeout.py HTTP/1.1\r\nHost: x\r\n\r\n")
        script, child = pids.read("timeout"), pids.read("timeout.child")
        assert procfs.stat(script.pid).ppid == helper_pids(timeout_server)[-1]
        response = connection.read_response()
    assert response.status == 504
    left = gone(script, child, timeout=started + 1 + MARGIN_SECONDS - time.monotonic())
    assert not left, f"still running {time.monotonic() - started:.1f} s after the request: {left}"
    assert not procfs.in_groups([script.pid])
    entry = record(timeout_server, response)
    assert (entry["status"], entry["signal"], entry["exit_code"], entry["stopped"], entry["warm"]) == (
        504, 15, None, "timeout", True
    ), entry
    request_id = response.header("X-Request-Id")
    wait_log(timeout_server, rf"timeout\.py \[{request_id}\] was killed by signal 15 \(timeout\)")
    assert_log_clean(timeout_server)


def test_warm_client_gone_stops_group(server, pids):
    """A client that leaves mid-response gets the warm script's process group stopped at once (SIGTERM), logged as "client gone"."""
    with connect(server.port) as sock:
        sock.sendall(b"GET /gone.py HTTP/1.1\r\nHost: x\r\n\r\n")
        script, child = pids.read("gone"), pids.read("gone.child")
        data = recv_until(sock, b"partial")
    request_id = re.search(rb"X-Request-Id: (\w+)", data).group(1).decode()
    left = gone(script, child, timeout=3)
    assert not left, f"still running 3 s after the client left: {left}"
    assert not procfs.in_groups([script.pid])
    wait_log(server, rf"\[{request_id}\] was killed by signal 15 \(client gone\)")
    entry = record_of(server, request_id)
    assert (entry["signal"], entry["stopped"], entry["warm"]) == (15, "client gone", True), entry


def test_warm_stderr_logged(server):
    """Each line a warm script writes to stderr is one server log line tagged with the script and the request id."""
    response = get(server, "/stderr.py")
    assert_warm(server, response)
    request_id = response.header("X-Request-Id")
    log = wait_log(server, rf"stderr\.py \[{request_id}\] stderr: warm stderr two")
    assert f"{server.root}/stderr.py [{request_id}] stderr: warm stderr one" in log


def test_warm_form_post_in_argv(server):
    """The tutorial's hello.py, warm, greets the name of a url-encoded form POST read from argv[1]."""
    response = request(
        server.port, "POST", "/hello.py", [("Content-Type", "application/x-www-form-urlencoded")], b"first_name=paul"
    )
    assert response.status == 200
    assert b"Hello, paul!" in response.body
    assert_warm(server, response)


def test_warm_upload_streamed_byte_exact(server):
    """A 5 MiB upload reaches a warm script's stdin.buffer byte for byte."""
    body = random.Random(5).randbytes(5 * MiB)
    response = request(server.port, "POST", "/sha.py", [("Content-Type", "application/octet-stream")], body)
    assert response.status == 200
    assert response.body.decode() == f"{len(body)} {len(body)} {hashlib.sha256(body).hexdigest()}\n"
    assert_warm(server, response)


def test_warm_upload_back_pressure(server, pids):
    """While a warm script does not read its stdin the server stops reading the upload; once it reads, the whole body arrives."""
    # More than the script's pipe, the server's read and both kernels' buffers hold.
    body = random.Random(8).randbytes(32 * MiB)
    with Connection(server.port) as connection:
        connection.send(
            b"POST /pressure.py HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        pids.read("pressure")
        sender = threading.Thread(target=connection.sock.sendall, args=(body,))
        sender.start()
        try:
            stalled = procfs.wait_until(lambda: unsent_stalls(connection.sock), 5)
        finally:
            (pids.dir / "pressure.go").touch()
            sender.join(timeout=20)
        response = connection.read_response()
    assert stalled, "the server kept reading a body its script did not read"
    assert response.body.decode() == f"{len(body)} {len(body)} {hashlib.sha256(body).hexdigest()}\n"
    assert_warm(server, response)


def test_warm_exit_status_logged(server, exec_server):
    """A warm script's exit status 3 is in its access-log record and the server log, as an exec'd one's is."""
    for each in (server, exec_server):
        response = get(each, "/exit3.py")
        assert response.body == b"bye"
        entry = record(each, response)
        assert (entry["exit_code"], entry["signal"], entry["warm"]) == (3, None, each is server), entry
        wait_log(each, rf"(?m){each.root}/exit3\.py \[{response.header('X-Request-Id')}\] exited with status 3$")


def test_warm_script_edited_in_place_runs_new_code(server, root):
    """A script rewritten on disk with its size and mtime kept runs its new code at the next warm request."""
    path = write_script(root, "edited.py", f"#!{PYTHON3}\nprint('Content-Type: text/plain\\n\\nversion one')\n")
    before = os.stat(path)
    first = get(server, "/edited.py")
    assert first.body == b"version one\n"
    with open(path, "r+b") as f:
        f.write(path.read_bytes().replace(b"version one", b"version two"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = get(server, "/edited.py")
    assert second.body == b"version two\n"
    assert_warm(server, first)
    assert_warm(server, second)


def test_warm_request_changes_invisible_to_next(server):
    """What a warm script changes (a preloaded module's globals, os.environ, sys.path) is gone at the next request."""
    untouched = {"json_attribute": False, "json_dumps": "[1]", "environ": None, "path": False}
    for _ in range(3):
        response = get(server, "/isolation.py")
        assert json.loads(response.body) == untouched
        assert_warm(server, response)


# -- the helper's life


def test_killed_helper_replaced(lifecycle_server):
    """After its helper is SIGKILLed, requests still succeed (exec'd, the reason naming the helper), the end is logged, and a new helper serves warm within seconds."""
    until_warm(lifecycle_server)
    old = helper_pids(lifecycle_server)[-1]
    assert procfs.stat(old).ppid == lifecycle_server.process.pid
    os.kill(old, signal.SIGKILL)
    for _ in range(3):
        assert_exec(lifecycle_server, get(lifecycle_server, "/report.py"), "helper")
    wait_log(lifecycle_server, rf"Warm Python {PYTHON3}: helper {old} ended")
    assert procfs.wait_until(lambda: procfs.stat(old) is None, 5), f"helper {old} not reaped"
    assert procfs.wait_until(lambda: helper_pids(lifecycle_server)[-1] != old, 5), lifecycle_server.log()[-3000:]
    new = helper_pids(lifecycle_server)[-1]
    wait_log(lifecycle_server, rf"helper {new} ready in", timeout=10)
    after = until_warm(lifecycle_server, timeout=5)
    assert int(after.header("X-Ppid")) == new
    assert_log_clean(lifecycle_server)


def test_sighup_starts_fresh_helper(lifecycle_server):
    """SIGHUP to the server starts a new helper (tested again, then serving warm) and retires the old one, while requests keep succeeding."""
    until_warm(lifecycle_server)
    old = Tracked.of(helper_pids(lifecycle_server)[-1])
    passed = lifecycle_server.log().count("self-test passed")
    statuses, stop_requests = [], threading.Event()

    def keep_requesting():
        while not stop_requests.is_set():
            try:
                statuses.append(request(lifecycle_server.port, "GET", "/report.py").status)
            except OSError as e:
                statuses.append(repr(e))

    requester = threading.Thread(target=keep_requesting)
    requester.start()
    try:
        time.sleep(0.2)
        os.kill(lifecycle_server.process.pid, signal.SIGHUP)
        wait_log(lifecycle_server, r"SIGHUP: restarting the warm Python helpers")
        assert procfs.wait_until(lambda: lifecycle_server.log().count("self-test passed") > passed, 10)
        time.sleep(0.2)
    finally:
        stop_requests.set()
        requester.join(timeout=20)
    assert statuses and set(statuses) == {200}, statuses
    new = helper_pids(lifecycle_server)[-1]
    assert new != old.pid
    after = until_warm(lifecycle_server, timeout=5)
    assert int(after.header("X-Ppid")) == new
    assert not gone(old, timeout=5), f"retired helper {old.pid} still running"
    assert_log_clean(lifecycle_server)


def test_shutdown_finishes_warm_script(top, pids):
    """On SIGTERM a running warm script finishes within --shutdown-grace, its response is delivered, and no helper or script process is left."""
    server = launch(top, "--shutdown-grace", "10", "--kill-grace", "1")
    try:
        with Connection(server.port) as connection:
            connection.send(b"GET /late.py HTTP/1.1\r\nHost: x\r\n\r\n")
            script = pids.read("late")
            helper = Tracked.of(helper_pids(server)[-1])
            assert procfs.stat(script.pid).ppid == helper.pid
            server.process.send_signal(signal.SIGTERM)
            wait_log(server, r"Waiting up to [\d.]+ s for 1 running scripts")
            (top / "pids" / "late.go").touch()
            response = connection.read_response()
        assert (response.status, response.body) == (200, b"finished after the shutdown began")
        code = exited(server, timeout=10)
        left = gone(script, helper, timeout=5)
        assert_clean_exit(code, server)
        assert not left, left
        assert not procfs.children(helper.pid)
        assert not procfs.in_groups([script.pid])
        assert_log_clean(server)
    finally:
        (top / "pids" / "late.go").unlink(missing_ok=True)
        stop(server)


# -- helpers that cannot start, and interpreters that change


def test_interpreter_that_cannot_start_turns_warm_off(top, root):
    """An interpreter whose helper ends before it is ready turns warm mode off with one log line, and is not restarted."""
    fake = top / "not-python"
    fake.write_text("#!/bin/sh\necho 'this is no Python' >&2\nexit 1\n")
    fake.chmod(0o755)
    write_script(root, "fake.cgi", f"#!{fake}\n")
    server = launch(top, "--warm-python", str(fake), warm=())
    try:
        wait_log(server, rf"Warm Python {re.escape(str(fake))}: helper \d+ ended before it was ready .*; warm mode off")
        response = request(server.port, "GET", "/fake.cgi")
        # Exec'd, the interpreter that is no Python writes no response.
        assert response.status == 502
        assert record(server, response)["exec_reason"] == "warm mode off"
        time.sleep(MARGIN_SECONDS + 1)
        assert len(re.findall(rf"Warm Python {re.escape(str(fake))}: helper \d+ starting", server.log())) == 1
    finally:
        stop(server)


def test_interpreter_changed_on_disk_restarts_helper(top, root):
    """An interpreter that changes on disk gets a fresh helper, tested again, which then serves the scripts."""
    interpreter = top / "copied-python" / "python3"
    interpreter.parent.mkdir(exist_ok=True)
    shutil.copy2(PYTHON3_REAL, interpreter)
    write_script(root, "copied.py", f"#!{interpreter}\n" + REPORT)
    server = launch(top, warm=(str(interpreter),))
    try:
        first = get(server, "/copied.py")
        assert record(server, first)["warm"], record(server, first)
        passed = server.log().count("self-test passed")
        os.utime(interpreter, (time.time() + 10, time.time() + 10))
        wait_log(server, rf"Warm Python {re.escape(str(interpreter))}: {re.escape(str(interpreter))} changed on disk")
        assert procfs.wait_until(lambda: server.log().count("self-test passed") > passed, 15)
        helpers = helper_pids(server, str(interpreter))
        assert len(helpers) == 2
        after = get(server, "/copied.py")
        assert record(server, after)["warm"] and int(after.header("X-Ppid")) == helpers[-1]
    finally:
        stop(server)
        for pid in helper_pids(server, str(interpreter)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
