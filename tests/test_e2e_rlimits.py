"""End to end: the --limit-* options stop a memory hog, a CPU spinner, a file-size writer, a descriptor hog and a fork loop, exec'd or warm, and never the server."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from tests import procfs
from tests.conftest import sh, write_script
from tests.http import request
from tests.ops import read_json_lines
from tests.server import Server, wait_log

PYTHON3 = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(not os.access(PYTHON3, os.X_OK), reason=f"the scripts need {PYTHON3}")

# The resources the options limit, as /proc/PID/limits names them.
_LIMIT_LINES = ("Max cpu time", "Max address space", "Max processes", "Max file size", "Max open files")

OK = sh("printf 'Content-Type: text/plain\\n\\nok'\n")  # a builtin only: no fork
SPIN = f"#!{PYTHON3}\nwhile True:\n    pass\n"
HOG = f"#!{PYTHON3}\nhog = bytearray(1024 * 1024 * 1024)\nprint('Content-Type: text/plain\\n\\nallocated')\n"
OPENER = f"#!{PYTHON3}\nfiles = [open('/dev/null') for _ in range(100)]\nprint('Content-Type: text/plain\\n\\nopened')\n"


def writer(directory: Path) -> str:
    """
    A script that starts a response of 1000 bytes, then becomes head
    writing 200 KB to a file (and dies of SIGXFSZ at 64K); its output
    stays open (descriptor 3) until then.
    """
    return sh(
        "printf 'Content-Type: text/plain\\nContent-Length: 1000\\n\\nwriting'\n"
        f"exec 3>&1 head -c 200000 /dev/zero > {directory}/big\n"
    )


# A fork loop, bounded: at most 500 children, each of which exits as soon
# as the loop's process has ended (its pipe then closes). It says how many
# it forked, holds them for a moment (other requests come meanwhile), then
# fails with the fork's error, if any.
FORKS = f"""#!{PYTHON3}
import os, sys, time
read_end, write_end = os.pipe()
forked = 0
try:
    for _ in range(500):
        if os.fork() == 0:
            os.close(write_end)
            os.read(read_end, 1)
            os._exit(0)
        forked += 1
finally:
    print(f"forked {{forked}} children", file=sys.stderr, flush=True)
    time.sleep(1.5)
print("Content-Type: text/plain\\n\\nall forked")
"""


def limits_of(pid: int | str) -> dict[str, str]:
    """The limits of a process that the options set, as /proc shows them (soft, hard, unit)."""
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()
    return {line[:26].strip(): " ".join(line[26:].split()) for line in lines if line.startswith(_LIMIT_LINES)}


def assert_unlimited(pid: int) -> None:
    """The process has exactly the limits the tests run with, which it inherited: none of the scripts'."""
    assert limits_of(pid) == limits_of("self")


def assert_log_clean(server: Server) -> None:
    """No traceback or unhandled error of the server's in its log (the scripts' own tracebacks are their stderr lines)."""
    for line in server.log().splitlines():
        if "] stderr: " not in line:
            for marker in ("Traceback", "Unhandled", "CRITICAL", "#critical"):
                assert marker not in line, f"{marker!r} in the server log:\n{server.log()[-4000:]}"


def access_log(server: Server) -> Path:
    return Path(str(server.log_path) + ".access")


def record_of(server: Server, request_id: str) -> dict:
    """The JSON access-log record of a request, once its script has ended."""

    def find():
        try:
            return next((r for r in read_json_lines(access_log(server)) if r["request_id"] == request_id), None)
        except ValueError:  # a line being written
            return None

    found = procfs.wait_until(find, 10)
    assert found, f"no access-log record for {request_id}:\n{server.log()[-3000:]}"
    return found


def start(root: Path, *options: str, **kwargs) -> Server:
    """A server on C{root} with a JSON access log beside its log."""
    fd, log = tempfile.mkstemp(prefix="cgiserve-rlimits-", suffix=".log", dir=root.parent)
    os.close(fd)
    access = ["--access-log", log + ".access", "--access-log-format", "json", "--timeout", "30"]
    return Server(root, *access, *options, log_path=log, **kwargs).start()


def fail_beside(server: Server, target: str):
    """
    Request C{target} (a script a limit stops) while other requests run a
    normal script, until it has its answer: its response (or the
    ConnectionError of a cut one) and the normal ones' statuses.
    """
    answer = {}

    def failing():
        try:
            answer["response"] = request(server.port, "GET", target)
        except ConnectionError as e:  # cut: IncompleteResponse, or a reset
            answer["response"] = e

    thread = threading.Thread(target=failing)
    thread.start()
    others = []
    while thread.is_alive() or not others:
        others.append(request(server.port, "GET", "/ok.sh").status)
    thread.join()
    return answer["response"], others


def assert_stopped_by(server: Server, response, line: str, limit: str) -> dict:
    """The script got the client a 502 and one log line naming the limit; so says its access-log record."""
    assert response.status == 502, response.raw[:500]
    request_id = response.header("X-Request-Id")
    wait_log(server, re.escape(f"[{request_id}] {line}"))
    entry = record_of(server, request_id)
    assert (entry["status"], entry["limit"]) == (502, limit), entry
    return entry


# -- exec'd scripts


@pytest.fixture(scope="module")
def top():
    top = Path(os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-e2e-rlimits-")))
    root = top / "root"
    for name, body in (("ok.sh", OK), ("spin.py", SPIN), ("hog.py", HOG), ("open.py", OPENER), ("forks.py", FORKS)):
        write_script(root, name, body)
    (top / "out").mkdir()
    write_script(root, "write.sh", writer(top / "out"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def limited(top):
    server = start(
        top / "root", "--limit-cpu", "1", "--limit-memory", "256M", "--limit-file-size", "64K", "--limit-files", "16"
    )
    yield server
    server.stop()


def test_normal_script_runs_under_the_limits(limited):
    """A script within its limits answers as ever; the server itself has none of them."""
    response = request(limited.port, "GET", "/ok.sh")
    assert (response.status, response.body) == (200, b"ok")
    assert record_of(limited, response.header("X-Request-Id"))["limit"] is None
    assert_unlimited(limited.process.pid)


def test_cpu_spinner(limited):
    """A script spinning past --limit-cpu dies of SIGXCPU: 502, the log line and the record name the CPU limit."""
    response, others = fail_beside(limited, "/spin.py")
    entry = assert_stopped_by(limited, response, "was killed by signal 24 (SIGXCPU: --limit-cpu 1)", "cpu")
    assert entry["signal"] == 24
    assert set(others) == {200}
    assert_unlimited(limited.process.pid)


def test_memory_hog(limited):
    """A script allocating past --limit-memory fails (MemoryError): 502, and the log names the memory limit."""
    response, others = fail_beside(limited, "/hog.py")
    entry = assert_stopped_by(limited, response, "exited with status 1 (out of memory: --limit-memory 256M)", "memory")
    assert entry["exit_code"] == 1
    assert "MemoryError" in limited.log()
    assert set(others) == {200}
    assert_unlimited(limited.process.pid)


def test_file_size_writer(limited, top):
    """A script writing past --limit-file-size dies of SIGXFSZ after its headers: the response is cut, the log says why."""
    response, others = fail_beside(limited, "/write.sh")
    assert isinstance(response, ConnectionError), response
    log = wait_log(limited, re.escape("was killed by signal 25 (SIGXFSZ: --limit-file-size 64K)"))
    request_id = re.search(r"write\.sh \[(\w+)\] was killed by signal 25", log).group(1)
    assert record_of(limited, request_id)["limit"] == "file-size"
    assert (top / "out" / "big").stat().st_size == 64 * 1024
    assert set(others) == {200}
    assert_unlimited(limited.process.pid)


def test_descriptor_hog(limited):
    """A script opening more files than --limit-files gets EMFILE: 502, and the log names the limit."""
    response, others = fail_beside(limited, "/open.py")
    assert_stopped_by(limited, response, "exited with status 1 (Too many open files: --limit-files 16)", "files")
    assert "Too many open files" in limited.log()
    assert set(others) == {200}
    assert_unlimited(limited.process.pid)
    assert_log_clean(limited)


def test_no_exec_of_what_exec_refuses(limited, top):
    """A file that is neither #! script nor binary gets 502 as without limits, not a run by /bin/sh (as prlimit's execvp would)."""
    write_script(top / "root", "plain.cgi", "printf 'Content-Type: text/plain\\n\\nran by sh'\n")
    response = request(limited.port, "GET", "/plain.cgi")
    assert response.status == 502
    wait_log(limited, re.escape(f"[{response.header('X-Request-Id')}]: could not be executed: Exec format error"))


def test_workers_limit_their_scripts(top):
    """With --workers each worker parses the same options: its scripts are limited, the workers and master are not."""
    server = start(top / "root", "--workers", "2", "--limit-cpu", "1")
    try:
        response = request(server.port, "GET", "/spin.py")
        assert_stopped_by(server, response, "was killed by signal 24 (SIGXCPU: --limit-cpu 1)", "cpu")
        assert request(server.port, "GET", "/ok.sh").status == 200
        for pid in (server.process.pid, *server.worker_pids()):
            assert_unlimited(pid)
    finally:
        server.stop()


# -- processes: RLIMIT_NPROC counts a user's processes, and root has no limit


def _user_processes(uid: int) -> list[int]:
    """The processes (not threads) of a real uid now."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if re.search(rf"^Uid:\s+{uid}\s", status, re.MULTILINE):
                found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def script_user(top):
    """
    A throwaway system user and group for the server and its scripts:
    root is exempt from RLIMIT_NPROC, and another user's processes
    (nobody's) would count against the limit too.
    """
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("RLIMIT_NPROC is enforced only for a user other than root: needs root and useradd to make one")
    name = f"cgiserve-t{os.getpid()}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        check=True,
        timeout=30,
        capture_output=True,
    )
    top.chmod(0o755)
    try:
        yield name
    finally:
        uid = pwd.getpwnam(name).pw_uid
        procfs.wait_until(lambda: not _user_processes(uid), 10)
        subprocess.run(["userdel", name], timeout=30, capture_output=True)


PROCESSES = 20


@pytest.fixture(scope="module")
def process_limited(top, script_user):
    server = start(top / "root", "--limit-processes", str(PROCESSES), twistd_options=["--uid", script_user, "--gid", script_user])
    yield server
    server.stop()


def test_fork_loop(process_limited, script_user):
    """
    A fork loop stops at --limit-processes (the user's processes, the
    server's own included): 502 and a log line naming the limit. Other
    requests are answered meanwhile, the server has no such limit, and
    the loop's children are gone after it.
    """
    server = process_limited
    uid = pwd.getpwnam(script_user).pw_uid
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(response=request(server.port, "GET", "/forks.py")))
    thread.start()
    log = wait_log(server, r"forks\.py \[\w+\] stderr: forked \d+ children", timeout=15)
    forked = int(re.search(r"forked (\d+) children", log).group(1))
    assert 0 < forked < PROCESSES
    # While its children still count against the user's limit.
    assert request(server.port, "GET", "/ok.sh").status == 200
    thread.join(timeout=30)
    assert_stopped_by(server, answer["response"], f"exited with status 1 (no more processes: --limit-processes {PROCESSES})", "processes")
    assert "BlockingIOError" in server.log()
    assert procfs.wait_until(lambda: _user_processes(uid) == [server.process.pid], 10), _user_processes(uid)
    assert request(server.port, "GET", "/ok.sh").status == 200
    assert_unlimited(server.process.pid)
    assert_log_clean(server)


# -- warm Python


def _warm_unsupported() -> str | None:
    from cgiserve import warm

    return warm.supported()


@pytest.fixture(scope="module")
def warm_limited(top):
    unsupported = _warm_unsupported()
    if unsupported is not None:
        pytest.skip(unsupported)
    server = start(
        top / "root",
        "--warm-python",
        PYTHON3,
        "--limit-cpu",
        "1",
        "--limit-memory",
        "256M",
        env=dict(os.environ, PATH="/usr/local/bin:/usr/bin:/bin"),
    )
    try:
        wait_log(server, rf"Warm Python {re.escape(PYTHON3)}: self-test passed", timeout=20)
    except AssertionError:
        server.stop()
        raise
    yield server
    server.stop()


def _helper_pid(server: Server) -> int:
    return int(re.findall(rf"Warm Python {re.escape(PYTHON3)}: helper (\d+) starting", server.log())[-1])


@pytest.mark.parametrize(
    "target, line, limit",
    [
        ("/spin.py", "was killed by signal 24 (SIGXCPU: --limit-cpu 1)", "cpu"),
        ("/hog.py", "exited with status 1 (out of memory: --limit-memory 256M)", "memory"),
    ],
    ids=["cpu", "memory"],
)
def test_warm_scripts_limited(warm_limited, target, line, limit):
    """A warm child sets the limits before the script runs: the same 502 and log line; the helper and server have none."""
    response, others = fail_beside(warm_limited, target)
    entry = assert_stopped_by(warm_limited, response, line, limit)
    assert entry["warm"] is True, entry
    assert set(others) == {200}
    assert_unlimited(warm_limited.process.pid)
    assert_unlimited(_helper_pid(warm_limited))
    assert_log_clean(warm_limited)
