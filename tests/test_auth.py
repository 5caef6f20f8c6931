"""HTTP Basic authentication: the htpasswd parser, the checker with a fake thread pool, and a real server."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from cgiserve.auth import HtpasswdChecker, covers, parse_htpasswd
from cgiserve.tap import Options
from tests.conftest import write_script
from tests.http import request, wait_for
from tests.server import Server

# The "auth" extra: without it these tests skip.
bcrypt = pytest.importorskip("bcrypt", reason="needs the auth extra (bcrypt)")

PYTHON = sys.executable


def htpasswd_entry(user: str, password: str, prefix: bytes = b"$2y$") -> bytes:
    """A line as C{htpasswd -B} writes it: bcrypt with the $2y$ prefix (cost 4, to keep tests fast)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4))
    return user.encode() + b":" + prefix + hashed[4:] + b"\n"


# -- the file


def test_parse_htpasswd_reads_bcrypt_entries():
    """Entries of every bcrypt flavour are read; $2y$ (htpasswd -B) becomes the equivalent $2b$."""
    text = htpasswd_entry("alice", "a") + htpasswd_entry("bob", "b", b"$2a$") + htpasswd_entry("carol", "c", b"$2b$")
    users, problems = parse_htpasswd(text)
    assert problems == []
    assert sorted(users) == [b"alice", b"bob", b"carol"]
    assert users[b"alice"].startswith(b"$2b$")
    assert users[b"bob"].startswith(b"$2a$")
    assert bcrypt.checkpw(b"a", users[b"alice"])


@pytest.mark.parametrize(
    "line, problem",
    [
        (b"md5:$apr1$abc$defghijklmnopqrstuvwx", "line 1: 'md5' has no bcrypt hash (write it with htpasswd -B)"),
        (b"sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "line 1: 'sha' has no bcrypt hash (write it with htpasswd -B)"),
        (b"nocolon", "line 1: not user:hash"),
        (b":$2y$05$nouser", "line 1: not user:hash"),
    ],
)
def test_parse_htpasswd_skips_other_lines(line, problem):
    """A line that is not user:bcrypt-hash is skipped with a reason naming its line."""
    users, problems = parse_htpasswd(line + b"\n")
    assert users == {}
    assert problems == [problem]


def test_parse_htpasswd_ignores_blanks_and_comments():
    """Blank lines and # comments are neither users nor problems; CRLF line ends are fine."""
    users, problems = parse_htpasswd(b"\n# admins\r\n" + htpasswd_entry("alice", "a").replace(b"\n", b"\r\n"))
    assert list(users) == [b"alice"] and problems == []


@pytest.mark.parametrize(
    "prefixes, path, covered",
    [
        ([[b"private"]], [b"private", b"x"], True),
        ([[b"private"]], [b"private", b""], True),
        ([[b"private"]], [b"private"], True),
        ([[b"private"]], [b"privateer"], False),
        ([[b"private"]], [b"public", b"private"], False),
        ([[b"a"], [b"b", b"c"]], [b"b", b"c", b"d"], True),
        ([[b"a"], [b"b", b"c"]], [b"b", b"d"], False),
        ([[]], [b""], True),
        ([[]], [b"anything", b"at", b"all"], True),
    ],
)
def test_covers(prefixes, path, covered):
    """A prefix covers its own path and everything below it, segment by segment."""
    assert covers(prefixes, path) is covered


# -- the checker


class _InlinePool:
    """A thread pool that runs work only when told to, recording it."""

    def __init__(self):
        self.queued = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.queued.append((on_result, f, args, kwargs))

    def run(self):
        queued, self.queued = self.queued, []
        for on_result, f, args, kwargs in queued:
            on_result(True, f(*args, **kwargs))


class _Reactor(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.pool = _InlinePool()

    def getThreadPool(self):
        return self.pool

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class HtpasswdCheckerTests(SynchronousTestCase):
    def setUp(self):
        self.directory = Path(tempfile.mkdtemp(prefix="cgiserve-auth-"))
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = self.directory / "htpasswd"
        self.path.write_bytes(htpasswd_entry("alice", "secret") + htpasswd_entry("bob", "hunter2"))
        self.reactor = _Reactor()
        self.checker = HtpasswdChecker(str(self.path), self.reactor)

    def check(self, user, password):
        checking = self.checker.requestAvatarId(UsernamePassword(user, password))
        self.reactor.pool.run()
        return checking

    def test_right_password(self):
        """The right password gives the user name."""
        self.assertEqual(self.successResultOf(self.check(b"alice", b"secret")), b"alice")

    def test_wrong_password(self):
        """A wrong password fails with UnauthorizedLogin naming the user."""
        failure = self.failureResultOf(self.check(b"alice", b"wrong"), UnauthorizedLogin)
        self.assertIn("wrong password for 'alice'", failure.getErrorMessage())

    def test_unknown_user_costs_a_check(self):
        """An unknown user fails too, after a bcrypt check of its own so that timing does not tell."""
        checking = self.checker.requestAvatarId(UsernamePassword(b"mallory", b"secret"))
        self.assertEqual(len(self.reactor.pool.queued), 1)
        self.reactor.pool.run()
        failure = self.failureResultOf(checking, UnauthorizedLogin)
        self.assertIn("unknown user 'mallory'", failure.getErrorMessage())

    def test_bcrypt_runs_in_the_thread_pool(self):
        """bcrypt never runs on the calling (reactor) thread: the result waits for the pool."""
        checking = self.checker.requestAvatarId(UsernamePassword(b"alice", b"secret"))
        self.assertNoResult(checking)
        self.assertEqual([f.__name__ for _, f, _, _ in self.reactor.pool.queued], ["_verify"])
        self.reactor.pool.run()
        self.assertEqual(self.successResultOf(checking), b"alice")

    def test_success_is_cached(self):
        """A password that passed is not checked again: the second answer needs no thread."""
        self.successResultOf(self.check(b"alice", b"secret"))
        self.assertTrue(self.checker.cached(UsernamePassword(b"alice", b"secret")))
        again = self.checker.requestAvatarId(UsernamePassword(b"alice", b"secret"))
        self.assertEqual(self.successResultOf(again), b"alice")
        self.assertEqual(self.reactor.pool.queued, [])

    def test_failure_is_not_cached(self):
        """A wrong password is checked every time."""
        self.failureResultOf(self.check(b"alice", b"wrong"), UnauthorizedLogin)
        self.assertFalse(self.checker.cached(UsernamePassword(b"alice", b"wrong")))

    def test_changed_password_is_not_served_from_cache(self):
        """Once the file gives a user a new password, the old one fails, cached or not."""
        self.successResultOf(self.check(b"alice", b"secret"))
        self.path.write_bytes(htpasswd_entry("alice", "new password"))
        self.failureResultOf(self.check(b"alice", b"secret"), UnauthorizedLogin)
        self.assertEqual(self.successResultOf(self.check(b"alice", b"new password")), b"alice")

    def test_removed_user_is_refused(self):
        """A user removed from the file is refused at once, even with a cached success."""
        self.successResultOf(self.check(b"bob", b"hunter2"))
        self.path.write_bytes(htpasswd_entry("alice", "secret"))
        self.failureResultOf(self.check(b"bob", b"hunter2"), UnauthorizedLogin)

    def test_unreadable_file_refuses_everyone(self):
        """If the file goes away, nobody gets in (and nothing raises)."""
        self.path.unlink()
        self.failureResultOf(self.check(b"alice", b"secret"), UnauthorizedLogin)

    def test_long_password_is_cut_at_72_bytes(self):
        """As with htpasswd -B, only a password's first 72 bytes count."""
        self.path.write_bytes(htpasswd_entry("long", "p" * 72))
        self.assertEqual(self.successResultOf(self.check(b"long", b"p" * 100)), b"long")

    def test_malformed_hash_refuses(self):
        """An entry with a broken bcrypt hash refuses its user rather than raising."""
        self.path.write_bytes(b"broken:$2y$05$tooshort\n")
        self.failureResultOf(self.check(b"broken", b"x"), UnauthorizedLogin)


# -- options


@pytest.fixture
def auth_files():
    directory = Path(os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-auth-opts-")))
    (directory / "root").mkdir()
    (directory / "htpasswd").write_bytes(htpasswd_entry("alice", "secret"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_options_auth_paths_are_normalised(auth_files):
    """--auth-path is repeatable and each is normalised into path segments, trailing slash or not."""
    root, htpasswd = str(auth_files / "root"), str(auth_files / "htpasswd")
    options = parse("--root", root, "--htpasswd", htpasswd, "--auth-path", "/private/", "--auth-path", "/a/./b/../c")
    assert options["auth-path"] == [[b"private"], [b"a", b"c"]]
    assert options["auth-realm"] == "cgiserve"


@pytest.mark.parametrize(
    "args",
    [
        ["--auth-path", "/private/"],
        ["--htpasswd", "/nonexistent/htpasswd"],
        ["--htpasswd", "HTPASSWD", "--auth-path", "/../x"],
        ["--htpasswd", "HTPASSWD", "--auth-path", "relative"],
    ],
)
def test_bad_auth_options_are_usage_errors(auth_files, args):
    """--auth-path without --htpasswd, a missing file, or a prefix that is no path is a usage error."""
    args = [arg.replace("HTPASSWD", str(auth_files / "htpasswd")) for arg in args]
    with pytest.raises(usage.UsageError):
        parse("--root", str(auth_files / "root"), *args)


def test_missing_bcrypt_is_a_clear_usage_error(auth_files, monkeypatch):
    """Without the bcrypt package, --htpasswd is a usage error that says how to install it."""
    monkeypatch.setitem(sys.modules, "bcrypt", None)
    with pytest.raises(usage.UsageError, match=r"bcrypt.*cgiserve\[auth\]"):
        parse("--root", str(auth_files / "root"), "--htpasswd", str(auth_files / "htpasswd"))


# -- a real server

WHOAMI = f"""#!{PYTHON}
import json, os
print("Content-Type: application/json")
print()
print(json.dumps({{name: os.environ.get(name) for name in ("AUTH_TYPE", "REMOTE_USER", "HTTP_AUTHORIZATION")}}))
"""


@pytest.fixture(scope="module")
def site():
    """A root with a script in a public and a private directory, and an htpasswd file beside it."""
    top = Path(os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-auth-e2e-")))
    root = top / "root"
    for directory in ("public", "private", "privateer"):
        write_script(root, f"{directory}/who.py", WHOAMI)
    (root / "private" / "secret.txt").write_text("the secret\n")
    # The password file inside the root must never be served.
    (root / "htpasswd").write_bytes(htpasswd_entry("alice", "secret") + htpasswd_entry("bob", "b"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


def basic(user: str, password: str) -> tuple[str, str]:
    return ("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())


@pytest.fixture(scope="module")
def everywhere(site):
    htpasswd = str(site / "root" / "htpasswd")
    with Server(site / "root", "--htpasswd", htpasswd, "--auth-realm", 'Staff "only"') as server:
        yield server


@pytest.fixture(scope="module")
def private_only(site):
    with Server(site / "root", "--htpasswd", str(site / "root" / "htpasswd"), "--auth-path", "/private/") as server:
        yield server


def test_no_credentials_get_a_challenge(everywhere):
    """Without credentials the answer is 401 with a Basic challenge naming the realm (quoted)."""
    response = request(everywhere.port, "GET", "/public/who.py")
    assert response.status == 401
    assert response.header("WWW-Authenticate") == 'Basic realm="Staff \\"only\\"", charset="UTF-8"'
    assert response.header("X-Request-Id")


def test_right_password_runs_script_as_user(everywhere):
    """With the right password the script runs and sees AUTH_TYPE=Basic and REMOTE_USER, but not the password."""
    response = request(everywhere.port, "GET", "/public/who.py", [basic("alice", "secret")])
    assert response.status == 200
    assert json.loads(response.body) == {"AUTH_TYPE": "Basic", "REMOTE_USER": "alice", "HTTP_AUTHORIZATION": None}


@pytest.mark.parametrize(
    "header, reason",
    [
        (basic("alice", "wrong"), "wrong password for 'alice'"),
        (basic("mallory", "secret"), "unknown user 'mallory'"),
        (("Authorization", "Bearer abc"), "'Bearer' is not Basic authentication"),
        (("Authorization", "Basic " + base64.b64encode(b"no colon").decode()), "malformed Basic credentials"),
    ],
)
def test_bad_credentials_are_refused_and_logged(everywhere, header, reason):
    """Wrong credentials get 401 and one log line saying why, with the request id and the client."""
    response = request(everywhere.port, "GET", "/public/who.py", [header])
    assert response.status == 401
    assert response.header("WWW-Authenticate").startswith("Basic realm=")
    request_id = response.header("X-Request-Id")
    line = wait_for(lambda: [line for line in everywhere.log().splitlines() if request_id in line and "401" in line])
    assert len(line) == 1
    assert f"401 for /public/who.py from 127.0.0.1: {reason}" in line[0]


def test_static_files_are_protected_too(everywhere):
    """Everything is protected without --auth-path: static files and listings as well as scripts."""
    assert request(everywhere.port, "GET", "/private/secret.txt").status == 401
    assert request(everywhere.port, "GET", "/").status == 401
    assert request(everywhere.port, "GET", "/private/secret.txt", [basic("bob", "b")]).body == b"the secret\n"


def test_htpasswd_in_root_is_not_served(everywhere):
    """The password file is not served even to an authenticated user."""
    assert request(everywhere.port, "GET", "/htpasswd", [basic("alice", "secret")]).status == 404


def test_auth_path_leaves_other_paths_open(private_only):
    """With --auth-path /private/, other paths need no credentials and their scripts see no REMOTE_USER."""
    for target in ("/public/who.py", "/privateer/who.py"):
        response = request(private_only.port, "GET", target)
        assert response.status == 200, target
        assert json.loads(response.body)["REMOTE_USER"] is None


@pytest.mark.parametrize(
    "target",
    [
        "/private/who.py",
        "/private",
        "/private/",
        "/private/secret.txt",
        "//private/secret.txt",
        "/public/../private/secret.txt",
        "/./private/secret.txt",
        "/%70rivate/secret.txt",
        "/public/%2e%2e/private/secret.txt",
        "/private//secret.txt",
    ],
)
def test_auth_path_cannot_be_bypassed(private_only, target):
    """Every spelling of a path under /private/ is protected, since prefixes match the normalised path."""
    assert request(private_only.port, "GET", target).status == 401


def test_auth_path_with_credentials(private_only):
    """Under --auth-path the right credentials let the request through, as that user."""
    response = request(private_only.port, "GET", "/private/who.py", [basic("bob", "b")])
    assert response.status == 200
    assert json.loads(response.body)["REMOTE_USER"] == "bob"


def test_upload_to_protected_script(private_only):
    """A POST with a body to a protected script reaches it once the password checks out (cached or not)."""
    for _ in range(2):
        headers = [basic("alice", "secret")]
        response = request(private_only.port, "POST", "/private/who.py", headers, body=b"x" * 100_000)
        assert response.status == 200
        assert json.loads(response.body)["REMOTE_USER"] == "alice"


def test_file_changes_apply_without_restart(site):
    """A user added to the htpasswd file can log in at once, and a removed one cannot."""
    path = site / "changing-htpasswd"
    path.write_bytes(htpasswd_entry("alice", "secret"))
    with Server(site / "root", "--htpasswd", str(path)) as server:
        assert request(server.port, "GET", "/public/who.py", [basic("alice", "secret")]).status == 200
        assert request(server.port, "GET", "/public/who.py", [basic("carol", "c")]).status == 401
        time.sleep(0.01)  # a new mtime even on coarse clocks, and a new size anyway
        path.write_bytes(htpasswd_entry("carol", "c"))
        assert request(server.port, "GET", "/public/who.py", [basic("carol", "c")]).status == 200
        assert request(server.port, "GET", "/public/who.py", [basic("alice", "secret")]).status == 401
