"""End to end: which requests run a script, what the script sees, and what the client gets back."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from cgiserve import __version__
from cgiserve.environ import SAFE_PATH
from tests.conftest import sh, write_script
from tests.http import Connection, build_request, request, wait_for
from tests.server import CHECKOUT, Server

PYTHON = sys.executable

# The script sees its environment as the server passed it: /proc/self/environ
# is the block given to execve, before Python adds anything (PEP 538 sets
# LC_CTYPE in a C locale).
DUMP = f"""#!{PYTHON}
import hashlib, json, os, sys
data = sys.stdin.buffer.read()
with open("/proc/self/environ", "rb") as f:
    block = f.read()
env = dict(os.fsdecode(item).split("=", 1) for item in block.split(b"\\0") if item)
report = {{
    "env": env,
    "argv0": sys.argv[0],
    "argv": [os.fsdecode(a) for a in sys.argv[1:]],
    "cwd": os.getcwd(),
    "stdin_len": len(data),
    "stdin_sha256": hashlib.sha256(data).hexdigest(),
}}
sys.stdout.write("Content-Type: application/json\\r\\n\\r\\n" + json.dumps(report))
"""

SENTINEL_PATH_DIR = "/nonexistent-cgiserve-sentinel-bin"

# In the source of scripts that must never be served as files.
PASSWORD = "hunter2-SOURCE-MARKER"


def build_docroot(root: Path) -> None:
    """The dump script in several places, the tutorial's scripts, and scripts with every kind of output."""
    write_script(root, "env.py", DUMP)
    write_script(root, "sub/app.py", DUMP)
    write_script(root, "plain.py", DUMP, mode=0o644)
    for name in ("hello.py", "hello-stdin.py"):
        write_script(root, name, (CHECKOUT / "examples" / name).read_text())
    write_script(
        root,
        "method.sh",
        sh("printf 'Content-Type: text/plain\\nX-Method: %s\\n\\n%s' \"$REQUEST_METHOD\" \"$REQUEST_METHOD\"\n"),
    )
    (root / "other.txt").write_text("the other file\n")
    # Scripts that cannot run, for the 403 tests; --cgi-dir cgi-bin.
    secret = sh(f"# PASSWORD={PASSWORD}\nprintf 'Content-Type: text/plain\\n\\nran %s' \"$SCRIPT_NAME\"\n")
    write_script(root, "secret.cgi", secret, mode=0o644)
    write_script(root, "run.cgi", secret)
    write_script(root, "cgi-bin/readme.txt", f"PASSWORD={PASSWORD}\n", mode=0o644)
    write_script(root, "cgi-bin/x.py", f"#!{PYTHON}\nPASSWORD = {PASSWORD!r}\n", mode=0o644)
    write_script(root, "cgi-bin/run.sh", secret)
    write_script(root, "cgi-bin/sub/.hidden", PASSWORD, mode=0o644)
    write_script(root, "notes.txt", "static notes\n", mode=0o644)
    outputs = {
        "status-reason.sh": "printf 'Status: 404 Not Found Here\\r\\nContent-Type: text/plain\\r\\n\\r\\nmissing\\n'",
        "status-plain.sh": "printf 'Status: 404 Not Found\\nContent-Type: text/plain\\n\\nmissing\\n'",
        "status-nospace.sh": "printf 'Status:404\\nContent-Type: text/plain\\n\\nmissing\\n'",
        "location-abs.sh": "printf 'Location: http://example.invalid/x\\n\\n'",
        "location-301.sh": "printf 'Status: 301 Moved Permanently\\nLocation: http://example.invalid/x\\n\\n'",
        "location-local.sh": "printf 'Location: /other.txt\\n\\nignored body'",
        "location-script.sh": "printf 'Location: /env.py/p?from=redirect&x=%%41\\n\\n'",
        "location-netpath.sh": "printf 'Location: //host.invalid/x\\n\\n'",
        "cookies.sh": "printf 'Content-Type: text/plain\\nSet-Cookie: a=1\\nSet-Cookie: b=2; Path=/\\n\\nok'",
        "server-date.sh": (
            "printf 'Content-Type: text/plain\\nServer: evil/6.6\\nDate: Mon, 01 Jan 1990 00:00:00 GMT\\n\\nok'"
        ),
        "nph-x.sh": "printf 'HTTP/1.1 299 Custom\\r\\nX-A: b\\r\\n\\r\\nbody'",
        "notype.sh": "printf 'X-Only: 1\\n\\nuntyped'",
        "stream.sh": "printf 'Content-Type: text/plain\\n\\nfirst\\n'; sleep 1; printf 'second\\n'",
        "nolength.sh": "printf 'Content-Type: text/plain\\n\\none\\n'; printf 'two\\n'; printf 'three\\n'",
        "length.sh": "printf 'Content-Type: text/plain\\nContent-Length: 5\\n\\nhello'",
    }
    for name, body in outputs.items():
        write_script(root, name, sh(body + "\n"))


def server_env() -> dict[str, str]:
    """The server's own environment: sentinels that must not reach scripts, python3 first on PATH."""
    env = dict(os.environ)
    env["CGISERVE_SENTINEL"] = "leak-sentinel"
    env["CGISERVE_PASSED"] = "passed-value"
    env["PATH"] = os.pathsep.join([SENTINEL_PATH_DIR, os.path.dirname(PYTHON), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module")
def root():
    top = Path(tempfile.mkdtemp(prefix="cgiserve-e2e-cgi-"))
    root = top / "root"
    root.mkdir()
    build_docroot(root)
    yield Path(os.path.realpath(root))
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def server(root):
    with Server(root, env=server_env()) as server:
        yield server


@pytest.fixture(scope="module")
def flags_server(root):
    options = [
        "--pass-auth",
        "--no-form-argv",
        "--isindex-argv",
        "--pass-env",
        "CGISERVE_PASSED",
        "--pass-env",
        "CGISERVE_NOT_SET_ANYWHERE",
        "--set-env",
        "CGISERVE_SET=value=with=equals",
        "--set-env",
        "CGISERVE_EMPTY=",
    ]
    with Server(root, *options, env=server_env()) as server:
        yield server


@pytest.fixture(scope="module")
def interpreter_server(root):
    with Server(root, "--interpreter", ".py=python3", "--interpreter", ".cgi=sh", env=server_env()) as server:
        yield server


@pytest.fixture(scope="module")
def cgi_dir_server(root):
    with Server(root, "--cgi-dir", "cgi-bin", env=server_env()) as server:
        yield server


def dump(server, method="GET", target="/env.py", headers=(), body=None, version="HTTP/1.1"):
    """Run a dump script; return the response and the script's report."""
    response = request(server.port, method, target, headers, body, version)
    assert response.status == 200, response.raw[:2000]
    return response, json.loads(response.body)


# -- which requests run a script


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_executable_runs_for_every_method(server, method):
    """An executable regular file runs for every method and sees that method."""
    body = None if method in ("GET", "HEAD") else b"x=1"
    response = request(server.port, method, "/method.sh", body=body)
    assert response.status == 200
    assert response.header("X-Method") == method
    assert response.body == (b"" if method == "HEAD" else method.encode())


def test_interpreter_runs_non_executable_file(interpreter_server, root):
    """With --interpreter .py=python3 a non-executable .py runs with python3, the script as its argument."""
    _, report = dump(interpreter_server, target="/plain.py")
    assert report["argv0"] == str(root / "plain.py")
    assert report["env"]["SCRIPT_NAME"] == "/plain.py"


def test_without_interpreter_non_executable_file_is_static(server):
    """Without --interpreter a non-executable .py is a static file: its text, not its output."""
    response = request(server.port, "GET", "/plain.py")
    assert response.status == 200
    assert response.body.startswith(b"#!")


# -- scripts that cannot run: 403, never their source


def assert_forbidden(server, response, path: Path, hint: str) -> None:
    """The response is a 403 without the file's content, and the server logged one line about it with C{hint}."""
    assert response.status == 403
    assert PASSWORD.encode() not in response.raw
    request_id = response.header("X-Request-Id")
    lines = wait_for(lambda: [line for line in server.log().splitlines() if request_id in line and str(path) in line])
    assert len(lines) == 1
    assert hint in lines[0]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_non_executable_cgi_forbidden(server, root, method):
    """A .cgi without the exec bit gets 403 for every method, never its source, and one log line saying chmod +x."""
    body = None if method in ("GET", "HEAD") else b"x=1"
    response = request(server.port, method, "/secret.cgi", body=body)
    assert_forbidden(server, response, root / "secret.cgi", "not executable: chmod +x")


def test_executable_cgi_runs(server):
    """An executable .cgi runs."""
    response = request(server.port, "GET", "/run.cgi")
    assert response.status == 200
    assert response.body == b"ran /run.cgi"


def test_cgi_with_interpreter_runs_without_exec_bit(interpreter_server):
    """With --interpreter .cgi=sh a .cgi without the exec bit runs."""
    response = request(interpreter_server.port, "GET", "/secret.cgi")
    assert response.status == 200
    assert response.body == b"ran /secret.cgi"


@pytest.mark.parametrize("name", ["readme.txt", "x.py"])
def test_non_executable_file_in_cgi_dir_forbidden(cgi_dir_server, root, name):
    """Under --cgi-dir a file without the exec bit gets 403, never its content, and one log line saying chmod +x."""
    response = request(cgi_dir_server.port, "GET", f"/cgi-bin/{name}")
    assert_forbidden(cgi_dir_server, response, root / "cgi-bin" / name, "not executable: chmod +x")


def test_executable_in_cgi_dir_runs(cgi_dir_server):
    """Under --cgi-dir an executable file runs."""
    assert request(cgi_dir_server.port, "GET", "/cgi-bin/run.sh").body == b"ran /cgi-bin/run.sh"


def test_cgi_outside_cgi_dir_forbidden(cgi_dir_server, root):
    """With --cgi-dir an executable .cgi elsewhere gets 403, never its source, and a log line saying why."""
    response = request(cgi_dir_server.port, "GET", "/run.cgi")
    assert_forbidden(cgi_dir_server, response, root / "run.cgi", "outside every --cgi-dir")


def test_other_file_outside_cgi_dir_static(cgi_dir_server):
    """With --cgi-dir a non-executable file elsewhere is served as it is."""
    response = request(cgi_dir_server.port, "GET", "/notes.txt")
    assert response.status == 200
    assert response.body == b"static notes\n"


def test_cgi_dir_listing_names_files(cgi_dir_server):
    """A directory under --cgi-dir is listed, names only: no file's content."""
    response = request(cgi_dir_server.port, "GET", "/cgi-bin/")
    assert response.status == 200
    assert b"readme.txt" in response.body
    assert PASSWORD.encode() not in response.body


def test_dotfile_in_cgi_dir_not_found(cgi_dir_server):
    """Under --cgi-dir a dotfile is still not found."""
    assert request(cgi_dir_server.port, "GET", "/cgi-bin/sub/.hidden").status == 404


def test_path_info(server, root):
    """Path segments below the script are its PATH_INFO, translated under the document root."""
    _, report = dump(server, target="/env.py/a/b")
    env = report["env"]
    assert env["SCRIPT_NAME"] == "/env.py"
    assert env["PATH_INFO"] == "/a/b"
    assert env["PATH_TRANSLATED"] == str(root) + "/a/b"


def test_script_in_subdirectory(server, root):
    """A script in a subdirectory has SCRIPT_NAME with its directory and no PATH_INFO to translate."""
    _, report = dump(server, target="/sub/app.py")
    env = report["env"]
    assert env["SCRIPT_NAME"] == "/sub/app.py"
    assert env["SCRIPT_FILENAME"] == str(root / "sub" / "app.py")
    assert env.get("PATH_INFO", "") == ""
    assert "PATH_TRANSLATED" not in env


@pytest.mark.parametrize("target, directory", [("/env.py", ""), ("/sub/app.py", "sub"), ("/sub/app.py/x/y", "sub")])
def test_working_directory_is_scripts_own(server, root, target, directory):
    """A script runs in its own directory."""
    _, report = dump(server, target=target)
    assert report["cwd"] == str(root / directory)


# -- environment


def test_rfc3875_variables(server, root):
    """A real request gives the script every RFC 3875 variable with its value for that request."""
    body = b"a=1&b=2"
    target = "/env.py/x%20y/z?a=%41&b=c+d"
    with Connection(server.port) as connection:
        response = connection.request(
            "POST", target, [("Content-Type", "application/x-www-form-urlencoded")], body
        )
        client_port = connection.local_port
    env = json.loads(response.body)["env"]
    expected = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": f"cgiserve/{__version__}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_ADDR": "127.0.0.1",
        "SERVER_PORT": str(server.port),
        "REQUEST_METHOD": "POST",
        "REQUEST_URI": target,
        "REQUEST_SCHEME": "http",
        "QUERY_STRING": "a=%41&b=c+d",
        "SCRIPT_NAME": "/env.py",
        "SCRIPT_FILENAME": str(root / "env.py"),
        "PATH_INFO": "/x y/z",
        "PATH_TRANSLATED": str(root) + "/x y/z",
        "DOCUMENT_ROOT": str(root),
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_HOST": "127.0.0.1",
        "REMOTE_PORT": str(client_port),
        "REQUEST_ID": response.header("X-Request-Id"),
        "REDIRECT_STATUS": "200",
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "HTTP_HOST": f"127.0.0.1:{server.port}",
    }
    assert {name: env.get(name) for name in expected} == expected
    for absent in ("HTTPS", "AUTH_TYPE", "REMOTE_USER", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
        assert absent not in env


def test_http10_protocol(server):
    """SERVER_PROTOCOL is HTTP/1.0 for an HTTP/1.0 request."""
    _, report = dump(server, version="HTTP/1.0")
    assert report["env"]["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_no_content_variables_without_body(server):
    """A request without a body gives no CONTENT_LENGTH and no CONTENT_TYPE."""
    _, report = dump(server, target="/env.py?x=1")
    assert "CONTENT_LENGTH" not in report["env"]
    assert "CONTENT_TYPE" not in report["env"]
    assert report["stdin_len"] == 0


def test_request_id_matches_header(server):
    """The X-Request-Id response header equals the REQUEST_ID the script saw, and differs per request."""
    first, report = dump(server)
    second, _ = dump(server)
    assert first.header("X-Request-Id") == report["env"]["REQUEST_ID"]
    assert first.header("X-Request-Id") != second.header("X-Request-Id")


def test_headers_become_http_variables(server):
    """Request headers become HTTP_* variables, '-' as '_', upper case."""
    _, report = dump(server, headers=[("Accept-Language", "en-GB"), ("X-Custom-Thing", "v a l")])
    assert report["env"]["HTTP_ACCEPT_LANGUAGE"] == "en-GB"
    assert report["env"]["HTTP_X_CUSTOM_THING"] == "v a l"


def test_repeated_headers_joined(server):
    """Repeated headers are joined with ', ', repeated Cookie headers with '; '."""
    headers = [("X-Multi", "a"), ("Cookie", "c1=1"), ("X-Multi", "b"), ("Cookie", "c2=2")]
    _, report = dump(server, headers=headers)
    assert report["env"]["HTTP_X_MULTI"] == "a, b"
    assert report["env"]["HTTP_COOKIE"] == "c1=1; c2=2"


def test_underscore_header_cannot_spoof(server):
    """A header spelled with '_' is dropped: it can neither set nor join its '-' twin."""
    headers = [("X-Foo", "real"), ("X_Foo", "spoof"), ("X_Bar", "spoof")]
    _, report = dump(server, headers=headers)
    assert report["env"]["HTTP_X_FOO"] == "real"
    assert "HTTP_X_BAR" not in report["env"]
    assert "spoof" not in json.dumps(report["env"])


def test_proxy_header_dropped(server):
    """A Proxy header never becomes HTTP_PROXY (httpoxy)."""
    _, report = dump(server, headers=[("Proxy", "http://evil.invalid:3128")])
    assert "HTTP_PROXY" not in report["env"]
    assert "evil.invalid" not in json.dumps(report["env"])


def test_authorization_dropped_by_default(server):
    """The Authorization header is not passed to scripts without --pass-auth."""
    _, report = dump(server, headers=[("Authorization", "Basic dXNlcjpwYXNz")])
    assert "HTTP_AUTHORIZATION" not in report["env"]
    assert "dXNlcjpwYXNz" not in json.dumps(report["env"])


def test_authorization_passed_with_pass_auth(flags_server):
    """With --pass-auth the Authorization header is HTTP_AUTHORIZATION."""
    _, report = dump(flags_server, headers=[("Authorization", "Basic dXNlcjpwYXNz")])
    assert report["env"]["HTTP_AUTHORIZATION"] == "Basic dXNlcjpwYXNz"
    assert "REMOTE_USER" not in report["env"]


@pytest.mark.parametrize("fixture", ["server", "flags_server"])
def test_client_cannot_set_remote_user(request, fixture):
    """Client headers named Remote-User or Auth-Type never become REMOTE_USER or AUTH_TYPE."""
    server = request.getfixturevalue(fixture)
    headers = [("Remote-User", "admin"), ("Auth-Type", "Basic"), ("Authorization", "Basic YWRtaW46eA==")]
    _, report = dump(server, headers=headers)
    assert "REMOTE_USER" not in report["env"]
    assert "AUTH_TYPE" not in report["env"]


def test_server_environment_does_not_leak(server):
    """Nothing of the server's own environment reaches a script."""
    _, report = dump(server)
    env = report["env"]
    own = server_env()
    leaked = {name for name in env if name in own and name != "PATH"}
    assert leaked == set()
    assert "leak-sentinel" not in json.dumps(env)
    assert "CGISERVE_PASSED" not in env


def test_path_is_fixed_and_safe(server):
    """A script's PATH is the fixed safe path, not the server's."""
    _, report = dump(server)
    path = report["env"]["PATH"]
    assert path == SAFE_PATH
    assert SENTINEL_PATH_DIR not in path
    assert all(part.startswith("/") for part in path.split(":"))


def test_pass_env(flags_server):
    """--pass-env passes that variable of the server's environment, and only when it is set."""
    _, report = dump(flags_server)
    env = report["env"]
    assert env["CGISERVE_PASSED"] == "passed-value"
    assert "CGISERVE_NOT_SET_ANYWHERE" not in env
    assert "CGISERVE_SENTINEL" not in env


def test_set_env(flags_server):
    """--set-env NAME=VALUE sets the variable in every script's environment, '=' and empty values kept."""
    _, report = dump(flags_server)
    assert report["env"]["CGISERVE_SET"] == "value=with=equals"
    assert report["env"]["CGISERVE_EMPTY"] == ""


# -- argv


def test_hello_form_post(server):
    """The tutorial's hello.py greets the name of a form POST, read from argv[1]."""
    response = request(
        server.port, "POST", "/hello.py", [("Content-Type", "application/x-www-form-urlencoded")], b"first_name=paul"
    )
    assert response.status == 200
    assert b"Hello, paul!" in response.body


def test_hello_stdin_form_post(server):
    """The tutorial's stdin variant greets the same name, read from stdin."""
    response = request(
        server.port,
        "POST",
        "/hello-stdin.py",
        [("Content-Type", "application/x-www-form-urlencoded")],
        b"first_name=paul",
    )
    assert response.status == 200
    assert b"Hello, paul!" in response.body


def test_form_body_in_argv_and_stdin(server):
    """A url-encoded form POST arrives as argv[1] and, whole, on stdin."""
    body = b"first_name=paul&x=%41+b"
    _, report = dump(server, "POST", headers=[("Content-Type", "application/x-www-form-urlencoded")], body=body)
    assert report["argv"] == [body.decode()]
    assert report["stdin_sha256"] == hashlib.sha256(body).hexdigest()


def test_non_form_body_not_in_argv(server):
    """A POST body that is not a url-encoded form is not in argv."""
    _, report = dump(server, "POST", headers=[("Content-Type", "text/plain")], body=b"first_name=paul")
    assert report["argv"] == []
    assert report["stdin_len"] == len(b"first_name=paul")


def test_no_form_argv(flags_server):
    """With --no-form-argv a form POST is on stdin only."""
    body = b"first_name=paul"
    _, report = dump(flags_server, "POST", headers=[("Content-Type", "application/x-www-form-urlencoded")], body=body)
    assert report["argv"] == []
    assert report["stdin_len"] == len(body)


def test_large_form_on_stdin_only(server):
    """A form body over 64 KiB is not in argv but fully on stdin."""
    body = b"first_name=" + b"a" * (64 * 1024)
    _, report = dump(server, "POST", headers=[("Content-Type", "application/x-www-form-urlencoded")], body=body)
    assert report["argv"] == []
    assert report["stdin_len"] == len(body)
    assert report["stdin_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "query, argv",
    [
        ("foo+bar", ["foo", "bar"]),
        ("foo%20x+bar", ["foo x", "bar"]),
        ("-x", []),
        ("foo+-x", []),
        ("a=b", []),
        ("", []),
    ],
)
def test_isindex_argv(flags_server, query, argv):
    """With --isindex-argv an indexed query's words are the arguments, unless one could be an option."""
    _, report = dump(flags_server, target="/env.py?" + query)
    assert report["argv"] == argv


def test_no_isindex_argv_by_default(server):
    """Without --isindex-argv an indexed query gives no arguments."""
    _, report = dump(server, target="/env.py?foo+bar")
    assert report["argv"] == []


# -- body


def test_binary_body_byte_exact(server):
    """Several MiB of binary body reach the script's stdin byte for byte."""
    body = bytes(range(256)) + random.Random(7).randbytes(4 * 1024 * 1024)
    _, report = dump(server, "POST", headers=[("Content-Type", "application/octet-stream")], body=body)
    assert report["env"]["CONTENT_LENGTH"] == str(len(body))
    assert report["stdin_len"] == len(body)
    assert report["stdin_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body(server):
    """A chunked request body arrives whole on stdin with CONTENT_LENGTH its real length."""
    parts = [b"first part\r\n", bytes(range(256)), b"x" * 70000, b"\0end"]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"
    whole = b"".join(parts)
    headers = [("Transfer-Encoding", "chunked"), ("Content-Type", "application/octet-stream")]
    with Connection(server.port) as connection:
        connection.send(build_request("POST", "/env.py", headers, port=server.port) + framed)
        response = connection.read_response("POST")
    report = json.loads(response.body)
    assert report["env"]["CONTENT_LENGTH"] == str(len(whole))
    assert report["stdin_len"] == len(whole)
    assert report["stdin_sha256"] == hashlib.sha256(whole).hexdigest()


# -- output


def test_status_keeps_reason_phrase(server):
    """A Status header's reason phrase is the one on the status line."""
    response = request(server.port, "GET", "/status-reason.sh")
    assert (response.status, response.reason) == (404, "Not Found Here")
    assert response.body == b"missing\n"


def test_status_with_standard_reason(server):
    """Status: 404 Not Found gives that status line."""
    response = request(server.port, "GET", "/status-plain.sh")
    assert (response.status, response.reason) == (404, "Not Found")


def test_status_without_space(server):
    """Status:404, without a space, is a 404."""
    response = request(server.port, "GET", "/status-nospace.sh")
    assert response.status == 404
    assert response.body == b"missing\n"


def test_absolute_location_redirects_client(server):
    """An absolute Location without Status gets 302 with that Location."""
    response = request(server.port, "GET", "/location-abs.sh")
    assert response.status == 302
    assert response.header("Location") == "http://example.invalid/x"


def test_location_with_status(server):
    """A Location with Status: 301 gets 301."""
    response = request(server.port, "GET", "/location-301.sh")
    assert response.status == 301
    assert response.header("Location") == "http://example.invalid/x"


def test_local_location_served_by_server(server):
    """A Location that is a path, without Status, is served by the server itself: 200 and that file."""
    response = request(server.port, "GET", "/location-local.sh")
    assert response.status == 200
    assert response.body == b"the other file\n"
    assert response.header("Location") is None


def test_local_location_to_script(server):
    """A local Location with a query runs that script as a GET with that query and path."""
    response, report = dump(
        server, "POST", "/location-script.sh", [("Content-Type", "text/plain")], body=b"dropped body"
    )
    env = report["env"]
    assert env["REQUEST_METHOD"] == "GET"
    assert env["QUERY_STRING"] == "from=redirect&x=%41"
    assert env["PATH_INFO"] == "/p"
    assert env["SCRIPT_NAME"] == "/env.py"
    assert "CONTENT_LENGTH" not in env
    assert report["stdin_len"] == 0
    assert response.header("X-Request-Id") == env["REQUEST_ID"]


def test_network_path_location_redirects_client(server):
    """A Location starting with // is a client redirect, not a local one."""
    response = request(server.port, "GET", "/location-netpath.sh")
    assert response.status == 302
    assert response.header("Location") == "//host.invalid/x"


def test_repeated_set_cookie(server):
    """Every Set-Cookie the script gives reaches the client."""
    response = request(server.port, "GET", "/cookies.sh")
    assert response.header_values("Set-Cookie") == ["a=1", "b=2; Path=/"]


def test_script_cannot_set_server_or_date(server):
    """The server's own Server and Date headers win over the script's."""
    response = request(server.port, "GET", "/server-date.sh")
    assert response.header_values("Server") == [f"cgiserve/{__version__}"]
    dates = response.header_values("Date")
    assert len(dates) == 1
    assert "1990" not in dates[0]


def test_nph_passes_through_and_closes(server):
    """An nph- script's output reaches the client byte for byte, and the connection then closes."""
    with Connection(server.port) as connection:
        connection.send(build_request("GET", "/nph-x.sh", port=server.port))
        received = connection.read_until_close()
    assert received == b"HTTP/1.1 299 Custom\r\nX-A: b\r\n\r\nbody"


def test_no_content_type_stays_absent(server):
    """A script that gives no Content-Type gets none added."""
    response = request(server.port, "GET", "/notype.sh")
    assert response.status == 200
    assert response.header("X-Only") == "1"
    assert response.header("Content-Type") is None
    assert response.body == b"untyped"


def test_output_streams(server):
    """The client receives the script's first line before the script writes its second."""
    with Connection(server.port) as connection:
        connection.send(build_request("GET", "/stream.sh", port=server.port))
        early = connection.read_until(b"first\n")
        response = connection.read_response()
    assert b"second" not in early
    assert response.body == b"first\nsecond\n"


def test_chunked_without_content_length(server):
    """Without a Content-Length from the script, an HTTP/1.1 response is chunked."""
    with Connection(server.port) as connection:
        response = connection.request("GET", "/nolength.sh")
        # The framing let the connection carry another request.
        again = connection.request("GET", "/length.sh")
    assert response.chunked
    assert response.header("Content-Length") is None
    assert response.raw.endswith(b"\r\n0\r\n\r\n")
    assert response.body == b"one\ntwo\nthree\n"
    assert again.body == b"hello"


def test_connection_close_honoured(server):
    """A request with Connection: close gets its script's response and then the connection closes."""
    with Connection(server.port) as connection:
        response = connection.request("GET", "/length.sh", [("Connection", "close")])
        closed = connection.closed_by_server()
    assert response.body == b"hello"
    assert closed


def test_keep_alive_after_script(server):
    """Without Connection: close, the connection stays open for another request after a script's response."""
    with Connection(server.port) as connection:
        first = connection.request("GET", "/length.sh")
        second = connection.request("GET", "/method.sh")
    assert first.body == b"hello"
    assert second.body == b"GET"


def test_http10_without_content_length_closes(server):
    """Without a Content-Length, an HTTP/1.0 response is not chunked and ends when the connection closes."""
    with Connection(server.port) as connection:
        connection.send(build_request("GET", "/nolength.sh", version="HTTP/1.0", port=server.port))
        response = connection.read_response()
    assert not response.chunked
    assert response.header("Transfer-Encoding") is None
    assert response.body == b"one\ntwo\nthree\n"


def test_content_length_respected(server):
    """A script's Content-Length is the response's, without chunking."""
    with Connection(server.port) as connection:
        response = connection.request("GET", "/length.sh")
    assert response.header("Content-Length") == "5"
    assert response.header("Transfer-Encoding") is None
    assert response.body == b"hello"
    assert response.raw.endswith(b"\r\n\r\nhello")


def test_big_responses_arrive_exact_and_the_connection_serves_on(server, root):
    """A 24 MiB response (sent in big writes), with and without Content-Length, arrives byte for byte; small ones follow on the connection."""
    data = random.Random(24).randbytes(24 * 1024 * 1024)
    (root / "big.bin").write_bytes(data)
    write_script(root, "big-chunked.sh", sh(f"printf 'Content-Type: application/octet-stream\\n\\n'\nexec cat {root}/big.bin"))
    write_script(
        root,
        "big-length.sh",
        sh(f"printf 'Content-Type: application/octet-stream\\nContent-Length: {len(data)}\\n\\n'\nexec cat {root}/big.bin"),
    )
    with Connection(server.port) as connection:
        for name in ("big-chunked.sh", "big-length.sh"):
            response = connection.request("GET", f"/{name}")
            assert response.status == 200
            assert hashlib.sha256(response.body).digest() == hashlib.sha256(data).digest()
            small = connection.request("GET", "/method.sh")
            assert (small.status, small.body) == (200, b"GET")


def big_script(root: Path, name: str, size: int, declared: int | None = None) -> bytes:
    """A script writing C{size} random bytes, with a Content-Length of C{declared} if given; returns its data."""
    data = random.Random(size).randbytes(size)
    (root / f"{name}.bin").write_bytes(data)
    length = "" if declared is None else f"Content-Length: {declared}\\n"
    write_script(root, name, sh(f"printf 'Content-Type: application/octet-stream\\n{length}\\n'\nexec cat {root}/{name}.bin"))
    return data


def test_big_http10_response_ends_with_the_connection(server, root):
    """A big response without a Content-Length to an HTTP/1.0 client is neither chunked nor cut: it ends when the connection closes."""
    data = big_script(root, "big-http10.sh", 9 * 1024 * 1024 + 7)
    with Connection(server.port) as connection:
        connection.send(build_request("GET", "/big-http10.sh", version="HTTP/1.0", port=server.port))
        response = connection.read_response()
    assert response.status == 200
    assert not response.chunked
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(data).digest()


def test_big_response_beyond_its_content_length_is_cut_to_it(server, root):
    """A script writing 3 MiB after declaring 2 MiB: the client gets exactly 2 MiB, the rest is dropped with a warning, the connection serves on."""
    declared = 2 * 1024 * 1024
    data = big_script(root, "big-over.sh", 3 * 1024 * 1024, declared)
    with Connection(server.port) as connection:
        response = connection.request("GET", "/big-over.sh")
        small = connection.request("GET", "/method.sh")
    assert response.status == 200
    assert response.body == data[:declared]
    assert (small.status, small.body) == (200, b"GET")
    request_id = response.header("X-Request-Id")
    assert wait_for(lambda: f"[{request_id}] wrote more than its Content-Length" in server.log())


def test_big_response_short_of_its_content_length_is_cut(server, root):
    """A script ending 1 MiB short of its declared 4 MiB: the connection is cut, so the client never sees a complete response."""
    big_script(root, "big-short.sh", 3 * 1024 * 1024, 4 * 1024 * 1024)
    raw = b""
    with Connection(server.port) as connection:
        connection.send(build_request("GET", "/big-short.sh", port=server.port))
        try:
            while data := connection.sock.recv(1 << 20):
                raw += data
        except ConnectionResetError:
            pass
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) <= 3 * 1024 * 1024
    request_id = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])[b"X-Request-Id"].decode()
    assert wait_for(lambda: f"[{request_id}] ended 1048576 bytes short of its Content-Length" in server.log())
