"""End to end: running as another user, which files run as scripts, and following a request through the logs."""

from __future__ import annotations

import json
import os
import grp
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
from twisted.python import usage

from cgiserve.tap import Options
from tests.conftest import write_script
from tests.http import request, wait_for
from tests.ops import PYTHON, read_json_lines
from tests.server import Server

ROOT_WARNING = "Running as root: every script runs as root too."

IDS = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n%s %s' \"$(id -u)\" \"$(id -g)\"\n"


@pytest.fixture
def top():
    """A temporary directory that any user can read (mkdtemp's is private to root)."""
    top = Path(os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-ops-")))
    top.chmod(0o755)
    (top / "root").mkdir(mode=0o755)
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def serve(top):
    """Start a cgiserve on top/root with these options; stopped after the test."""
    servers = []

    def start(*options, **kwargs):
        servers.append(Server(top / "root", *options, **kwargs).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _process_ids(pid: int) -> tuple[str, str]:
    """The real, effective, saved and filesystem uids and gids of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    field = {line.split(":")[0]: line.split(":")[1].split() for line in status}
    return " ".join(field["Uid"]), " ".join(field["Gid"])


# -- privileges


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_uid_and_gid(serve, top):
    """With twistd's --uid/--gid the server binds as root, then it and every script run as that user."""
    write_script(top / "root", "id.sh", IDS)
    nobody = pwd.getpwnam("nobody").pw_uid
    nogroup = grp.getgrnam("nogroup").gr_gid
    server = serve(twistd_options=["--uid", "nobody", "--gid", "nogroup"])
    response = request(server.port, "GET", "/id.sh")
    assert response.status == 200
    assert response.body.decode() == f"{nobody} {nogroup}"
    assert _process_ids(server.process.pid) == (" ".join([str(nobody)] * 4), " ".join([str(nogroup)] * 4))
    assert ROOT_WARNING not in server.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="the warning is about running as root")
def test_root_warning(serve, top):
    """A server that runs as root says so once, at startup."""
    server = serve()
    assert request(server.port, "GET", "/").status == 200
    assert server.log().count(ROOT_WARNING) == 1


# -- --cgi-dir

SHOW = "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nran %s' \"$SCRIPT_NAME\"\n"


@pytest.fixture
def cgi_root(top):
    root = top / "root"
    for directory in ("cgi-bin", "tools", "static"):
        write_script(root, f"{directory}/show.sh", SHOW)
    write_script(root, "static/plain.py", f"#!{PYTHON}\nprint('Content-Type: text/plain\\n\\nran')\n", mode=0o644)
    write_script(root, "cgi-bin/plain.py", f"#!{PYTHON}\nprint('Content-Type: text/plain\\n\\nran')\n", mode=0o644)
    return root


def test_cgi_dir_runs_only_there(serve, cgi_root):
    """With --cgi-dir only files under that directory run; executables elsewhere are served as they are."""
    server = serve("--cgi-dir", "cgi-bin")
    assert request(server.port, "GET", "/cgi-bin/show.sh").body == b"ran /cgi-bin/show.sh"
    response = request(server.port, "GET", "/static/show.sh")
    assert response.status == 200
    assert response.body == SHOW.encode()


def test_cgi_dir_repeatable(serve, cgi_root):
    """--cgi-dir is repeatable, and a leading or trailing slash makes no difference."""
    server = serve("--cgi-dir", "/cgi-bin/", "--cgi-dir", "tools")
    assert request(server.port, "GET", "/cgi-bin/show.sh").body == b"ran /cgi-bin/show.sh"
    assert request(server.port, "GET", "/tools/show.sh").body == b"ran /tools/show.sh"
    assert request(server.port, "GET", "/static/show.sh").body == SHOW.encode()


def test_cgi_dir_with_interpreter(serve, cgi_root):
    """An --interpreter applies only under --cgi-dir too."""
    server = serve("--cgi-dir", "cgi-bin", "--interpreter", ".py=python3")
    assert request(server.port, "GET", "/cgi-bin/plain.py").body == b"ran\n"
    assert request(server.port, "GET", "/static/plain.py").body.startswith(b"#!")


def test_without_cgi_dir_executables_run_anywhere(serve, cgi_root):
    """Without --cgi-dir every executable file runs, wherever it is."""
    server = serve()
    assert request(server.port, "GET", "/static/show.sh").body == b"ran /static/show.sh"


@pytest.mark.parametrize("name", ["missing", "../", "/..", "cgi-bin/show.sh"])
def test_bad_cgi_dir_is_usage_error(cgi_root, name):
    """A --cgi-dir that is not a directory under the root is a usage error."""
    with pytest.raises(usage.UsageError, match="--cgi-dir"):
        Options().parseOptions(["--root", str(cgi_root), "--cgi-dir", name])


# -- logs

NOISY = f"""#!{PYTHON}
import os, sys
sys.stderr.write("something to say\\n")
print("Content-Type: text/plain")
print()
print(os.environ["REQUEST_ID"])
sys.exit(2)
"""


def test_logfile_gets_server_log(serve, top):
    """twistd's --logfile gets the server's own events: startup, script stderr and exits, with the request id."""
    script = write_script(top / "root", "noisy.py", NOISY)
    server = serve()
    response = request(server.port, "GET", "/noisy.py")
    request_id = response.header("X-Request-Id")
    log = wait_for(lambda: "exited with status 2" in server.log() and server.log())
    assert "Site starting on" in log
    assert f"{script} [{request_id}] stderr: something to say" in log
    assert f"{script} [{request_id}] exited with status 2" in log


def test_request_id_across_logs(serve, top):
    """One request id links the response, the script's REQUEST_ID, the JSON access log and the server's events."""
    script = write_script(top / "root", "noisy.py", NOISY)
    server_log = top / "server.json"
    access_log = top / "access.json"
    server = serve(
        "--access-log",
        str(access_log),
        "--access-log-format",
        "json",
        twistd_options=["--logger", "tests.ops.json_observer"],
        log_path=server_log,
        env=dict(os.environ, CGISERVE_JSON_LOG=str(server_log)),
    )
    response = request(server.port, "GET", "/noisy.py")
    request_id = response.header("X-Request-Id")
    assert len(request_id) == 32
    assert response.body.decode().strip() == request_id

    [access] = json.loads("[" + wait_for(lambda: access_log.exists() and access_log.read_text()) + "]")
    assert (access["request_id"], access["script"], access["exit_code"]) == (request_id, str(script), 2)

    def events():
        found = [event for event in read_json_lines(server_log) if event.get("request_id") == request_id]
        return len(found) >= 2 and found

    found = wait_for(events)
    assert found, read_json_lines(server_log)
    assert {event["script"] for event in found} == {str(script)}
    assert {event.get("line") for event in found} >= {"something to say"}
    assert any("exited with status 2" in event.get("how", "") for event in found)
