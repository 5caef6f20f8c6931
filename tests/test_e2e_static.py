"""End to end: static files, directories, what is never served, and request paths, over real sockets."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import write_script
from tests.http import Connection, request, wait_for
from tests.server import Server

SECRET = b"TOP-SECRET-OUTSIDE-ROOT"
DOTENV = b"DOTENV-SECRET"
GIT_CONFIG = b"GIT-CONFIG-SECRET"
HIDDEN = b"HIDDEN-FILE-SECRET"
SOURCE_MARKER = "SCRIPT-SOURCE-MARKER"
RANGE_CONTENT = bytes(range(256)) * 4
# 2020-01-02 03:04:05 UTC
DATED_MTIME = 1577934245
DATED_HTTP = "Thu, 02 Jan 2020 03:04:05 GMT"


def build_docroot(root: Path) -> None:
    """Files, directories, dotfiles, symlinks and a script; a secret next to the root."""
    (root.parent / "secret.txt").write_bytes(SECRET)
    (root / "index.html").write_text("<h1>root index</h1>")
    (root / "hello.txt").write_text("hello, static\n")
    (root / "page.html").write_text("<p>page</p>")
    (root / "style.css").write_text("p { color: red }")
    (root / "data.json").write_text("{}")
    (root / "blob.zzunknown").write_bytes(b"<html>not really</html>")
    (root / "noext").write_bytes(b"<html>no extension</html>")
    (root / "range.bin").write_bytes(RANGE_CONTENT)
    (root / "dated.txt").write_text("dated\n")
    os.utime(root / "dated.txt", (DATED_MTIME, DATED_MTIME))
    (root / "notexec.py").write_text("print('never run')\n")
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "c.txt").write_text("this is a/c\n")
    (root / "a" / "b" / "b.txt").write_text("this is a/b/b\n")
    listed = root / "listed"
    (listed / "sub").mkdir(parents=True)
    (listed / "one.txt").write_text("one")
    (listed / "two.txt").write_text("two")
    (listed / ".hidden").write_bytes(HIDDEN)
    (listed / ".secretdir").mkdir()
    (listed / ".secretdir" / "x.txt").write_bytes(HIDDEN)
    (root / "htm").mkdir()
    (root / "htm" / "index.htm").write_text("htm index")
    (root / ".env").write_bytes(DOTENV)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_bytes(GIT_CONFIG)
    write_script(root, "show.sh", f"#!/bin/sh\n# {SOURCE_MARKER}\nprintf 'Content-Type: text/plain\\n\\nran show.sh\\n'\n")
    (root / "show-link.sh").symlink_to("show.sh")
    (root / "alias.txt").symlink_to("hello.txt")
    (root / "escape.txt").symlink_to("../secret.txt")
    (root / "escape-dir").symlink_to("..")
    (root / "escape-abs.txt").symlink_to(root.parent / "secret.txt")
    (root / "gitlink").symlink_to(".git")
    (root / "gitcfg").symlink_to(".git/config")
    # --index and --no-listing
    (root / "idx" / "both").mkdir(parents=True)
    (root / "idx" / "both" / "start.htm").write_text("start wins")
    (root / "idx" / "both" / "home.html").write_text("home loses")
    (root / "idx" / "second").mkdir()
    (root / "idx" / "second" / "home.html").write_text("home only")
    (root / "idx" / "neither").mkdir()
    (root / "idx" / "neither" / "index.html").write_text("default index")
    (root / "idx" / "empty").mkdir()
    # Either side of the size sent in one write (resource.SMALL_FILE_BYTES).
    for name, size in (("at-limit.bin", 64 * 1024), ("over-limit.bin", 64 * 1024 + 1), ("big.bin", 3 * 1024 * 1024)):
        (root / name).write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))


@pytest.fixture(scope="module")
def root():
    top = Path(tempfile.mkdtemp(prefix="cgiserve-e2e-static-"))
    root = top / "root"
    root.mkdir()
    build_docroot(root)
    yield root
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def server(root):
    with Server(root) as server:
        yield server


@pytest.fixture(scope="module")
def index_server(root):
    with Server(root, "--index", "start.htm", "--index", "home.html", "--no-listing") as server:
        yield server


def get(server, target, method="GET", headers=()):
    return request(server.port, method, target, headers)


# -- files as they are


def test_get_serves_file_as_is(server):
    """A GET of a regular file returns its bytes with Content-Length, Accept-Ranges and our headers."""
    response = get(server, "/hello.txt")
    assert response.status == 200
    assert response.body == b"hello, static\n"
    assert response.header("Content-Length") == "14"
    assert response.header("Accept-Ranges") == "bytes"
    assert response.header("Server").startswith("cgiserve/")
    assert len(response.header("X-Request-Id")) == 32


@pytest.mark.parametrize("name", ["at-limit.bin", "over-limit.bin", "big.bin"])
def test_files_of_every_size_served_whole(server, root, name):
    """Small files (sent in one write) and larger ones (sent in chunks) arrive byte for byte, every time."""
    expected = (root / name).read_bytes()
    for response in (get(server, f"/{name}"), get(server, f"/{name}")):
        assert response.status == 200
        assert response.header("Content-Length") == str(len(expected))
        assert response.body == expected


def test_head_has_get_headers_and_no_body(server):
    """A HEAD gets the headers of the GET and no body, so the connection carries the next request cleanly."""
    with Connection(server.port) as connection:
        head = connection.request("HEAD", "/range.bin")
        following = connection.request("GET", "/hello.txt")
    assert head.status == 200
    assert head.header("Content-Length") == str(len(RANGE_CONTENT))
    assert head.header("Content-Type") == "application/octet-stream"
    assert head.body == b""
    assert following.body == b"hello, static\n"


def test_range_gives_partial_content(server):
    """A single byte range gets 206 with Content-Range and exactly those bytes."""
    response = get(server, "/range.bin", headers=[("Range", "bytes=100-199")])
    assert response.status == 206
    assert response.header("Content-Range") == f"bytes 100-199/{len(RANGE_CONTENT)}"
    assert response.body == RANGE_CONTENT[100:200]


def test_suffix_range(server):
    """A suffix range gets the last bytes of the file."""
    response = get(server, "/range.bin", headers=[("Range", "bytes=-7")])
    assert response.status == 206
    assert response.body == RANGE_CONTENT[-7:]


def test_unsatisfiable_range(server):
    """A range past the end of the file gets 416."""
    response = get(server, "/range.bin", headers=[("Range", "bytes=5000-6000")])
    assert response.status == 416


def test_last_modified(server):
    """Last-Modified is the file's modification time."""
    assert get(server, "/dated.txt").header("Last-Modified") == DATED_HTTP


@pytest.mark.parametrize(
    "since, status",
    [
        (DATED_HTTP, 304),
        ("Fri, 03 Jan 2020 00:00:00 GMT", 304),
        ("Wed, 01 Jan 2020 00:00:00 GMT", 200),
    ],
)
def test_if_modified_since(server, since, status):
    """If-Modified-Since at or after the modification time gets 304 without a body, before it the file."""
    response = get(server, "/dated.txt", headers=[("If-Modified-Since", since)])
    assert response.status == status
    assert response.body == (b"" if status == 304 else b"dated\n")


@pytest.mark.parametrize(
    "target, media_type",
    [
        ("/hello.txt", "text/plain"),
        ("/page.html", "text/html"),
        ("/style.css", "text/css"),
        ("/data.json", "application/json"),
        ("/blob.zzunknown", "application/octet-stream"),
        ("/noext", "application/octet-stream"),
    ],
)
def test_mime_types(server, target, media_type):
    """The Content-Type follows the extension; an unknown or missing one is application/octet-stream."""
    response = get(server, target)
    assert response.status == 200
    assert response.header("Content-Type").split(";")[0] == media_type


# -- directories


def test_index_html_served_for_root(server):
    """The root's index.html is served for /."""
    response = get(server, "/")
    assert response.status == 200
    assert response.body == b"<h1>root index</h1>"


def test_index_htm_is_a_default_index(server):
    """A directory with only index.htm serves it."""
    assert get(server, "/htm/").body == b"htm index"


def test_directory_listing(server):
    """A directory without an index is listed as HTML, its files and subdirectories linked."""
    response = get(server, "/listed/")
    assert response.status == 200
    assert response.header("Content-Type").startswith("text/html")
    for name in (b"one.txt", b"two.txt", b"sub/"):
        assert b'href="' + name + b'"' in response.body


def test_listing_hides_dotfiles(server):
    """A listing shows no dotfile or dot-directory."""
    body = get(server, "/listed/").body
    assert b"one.txt" in body
    assert b".hidden" not in body
    assert b".secretdir" not in body


def test_directory_without_slash_redirects(server):
    """A directory asked for without its trailing slash redirects to the slashed path."""
    response = get(server, "/listed?x=1")
    assert response.status in (301, 302)
    assert response.header("Location").endswith("/listed/?x=1")


def test_first_configured_index_wins(index_server):
    """With --index given twice, the first name present in the directory is served."""
    assert get(index_server, "/idx/both/").body == b"start wins"


def test_second_configured_index(index_server):
    """The second --index name is served when the first is missing."""
    assert get(index_server, "/idx/second/").body == b"home only"


def test_configured_index_replaces_defaults(index_server):
    """With --index given, index.html is no longer an index: the directory is not served by it."""
    response = get(index_server, "/idx/neither/")
    assert response.status == 403
    assert b"default index" not in response.body


def test_no_listing_forbids(index_server):
    """With --no-listing a directory without an index gets 403 and no listing."""
    response = get(index_server, "/listed/")
    assert response.status == 403
    assert b"one.txt" not in response.body


# -- methods


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_on_static_file(server, method):
    """A method other than GET and HEAD on a static file gets 405 with Allow listing GET and HEAD."""
    with Connection(server.port) as connection:
        response = connection.request(method, "/hello.txt", body=b"x=1")
    assert response.status == 405
    allowed = {m.strip() for m in response.header("Allow").split(",")}
    assert allowed == {"GET", "HEAD"}


def test_post_to_listing(server):
    """A POST to a directory listing gets 405 with Allow listing GET and HEAD."""
    response = request(server.port, "POST", "/listed/", body=b"x=1")
    assert response.status == 405
    assert {m.strip() for m in response.header("Allow").split(",")} == {"GET", "HEAD"}


def test_post_to_unexecutable_script_logs_hint(server):
    """A POST to a .py file without the executable bit gets 405 and a log line saying it is not executable."""
    response = request(server.port, "POST", "/notexec.py", body=b"x=1")
    assert response.status == 405
    request_id = response.header("X-Request-Id")

    def hint():
        return [line for line in server.log().splitlines() if request_id in line and "notexec.py" in line]

    lines = wait_for(hint)
    assert len(lines) == 1
    assert "not executable" in lines[0]


def test_post_to_text_file_logs_no_hint(server):
    """A POST to a plain .txt file gets 405 without the not-executable hint."""
    response = request(server.port, "POST", "/hello.txt", body=b"x=1")
    assert response.status == 405
    # A hint would be logged while the request is handled, before the answer.
    assert not any("hello.txt" in line and "not executable" in line for line in server.log().splitlines())


# -- never served


def test_script_source_never_served(server):
    """A GET of an executable runs it: the client gets its output, never its source."""
    response = get(server, "/show.sh")
    assert response.status == 200
    assert response.body == b"ran show.sh\n"
    assert SOURCE_MARKER.encode() not in response.raw


def test_script_source_not_served_for_range(server):
    """A Range request to a script still runs it rather than serving part of the file."""
    response = get(server, "/show.sh", headers=[("Range", "bytes=0-20")])
    assert b"#!/bin/sh" not in response.raw
    assert response.body == b"ran show.sh\n"


def test_symlink_to_script_runs_it(server):
    """A symlink to a script inside the root runs the script."""
    response = get(server, "/show-link.sh")
    assert response.body == b"ran show.sh\n"
    assert SOURCE_MARKER.encode() not in response.raw


def test_symlink_inside_root_served(server):
    """A symlink to a file inside the root serves that file."""
    response = get(server, "/alias.txt")
    assert response.status == 200
    assert response.body == b"hello, static\n"


@pytest.mark.parametrize(
    "target",
    [
        "/.env",
        "/%2eenv",
        "/.git/config",
        "/.git/",
        "/.git",
        "/listed/.hidden",
        "/listed/.secretdir/x.txt",
        "/listed/.secretdir/",
        "/a/../.env",
    ],
)
def test_dotfiles_not_found(server, target):
    """Dotfiles and dot-directories do not exist for clients: 404."""
    response = get(server, target)
    assert response.status == 404
    for secret in (DOTENV, GIT_CONFIG, HIDDEN):
        assert secret not in response.raw


@pytest.mark.parametrize(
    "target", ["/hello.txt/child", "/hello.txt/", "/a/c.txt/x/y", "/missing/hello.txt", "/missing/", "/a/missing/c.txt"]
)
def test_below_a_file_or_missing_directory_not_found(server, target):
    """A path through a regular file or a directory that does not exist names nothing: 404."""
    response = get(server, target)
    assert response.status == 404
    assert b"hello, static" not in response.body


@pytest.mark.parametrize("target", ["/escape.txt", "/escape-abs.txt", "/escape-dir/secret.txt", "/escape-dir/"])
def test_symlink_out_of_root_not_found(server, target):
    """A symlink whose target leaves the root gets 404."""
    response = get(server, target)
    assert response.status == 404
    assert SECRET not in response.raw


@pytest.mark.parametrize("target", ["/gitlink/config", "/gitlink/", "/gitcfg"])
def test_symlink_into_dot_directory_not_found(server, target):
    """A symlink to a dot-directory (or into one) inside the root gets 404."""
    response = get(server, target)
    assert response.status == 404
    assert GIT_CONFIG not in response.raw


class DefaultPidServer(Server):
    """A server started as an operator would, without --pidfile=, so twistd writes twistd.pid into its cwd."""

    def command(self):
        return [part for part in super().command() if part != "--pidfile="]


@pytest.fixture(scope="module")
def pid_server():
    top = Path(tempfile.mkdtemp(prefix="cgiserve-e2e-pid-"))
    root = top / "root"
    root.mkdir()
    (root / "visible.txt").write_text("visible")
    # twistd writes twistd.log there without --logfile; stand one in.
    (root / "twistd.log").write_text("LOG-SECRET")
    try:
        with DefaultPidServer(root, cwd=root) as server:
            yield server
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_twistd_pid_file_not_served(pid_server):
    """The twistd.pid that twistd writes into the root (its cwd) gets 404."""
    pid_file = pid_server.root / "twistd.pid"
    assert pid_file.read_text().strip() == str(pid_server.process.pid)
    response = get(pid_server, "/twistd.pid")
    assert response.status == 404
    assert str(pid_server.process.pid).encode() not in response.body


def test_twistd_log_file_not_served(pid_server):
    """A twistd.log in the server's working directory gets 404."""
    response = get(pid_server, "/twistd.log")
    assert response.status == 404
    assert b"LOG-SECRET" not in response.raw


def test_twistd_files_not_listed(pid_server):
    """The listing of the root shows neither twistd.pid nor twistd.log."""
    response = get(pid_server, "/")
    assert response.status == 200
    assert b"visible.txt" in response.body
    assert b"twistd.pid" not in response.body
    assert b"twistd.log" not in response.body


# -- paths


@pytest.mark.parametrize(
    "target",
    [
        "/a/b/../c.txt",
        "/./a/c.txt",
        "//a//c.txt",
        "/a/./c.txt",
        "/a/b/./../c.txt",
        "/a/%2e/c.txt",
        "/a/b/%2e%2e/c.txt",
        "/a/b/.%2e/c.txt",
        "/a/c%2etxt",
        "/%61/c.txt",
    ],
)
def test_dot_segments_resolved(server, target):
    """Dot-segments, encoded or not, and empty segments are resolved before the file is found."""
    response = get(server, target)
    assert response.status == 200
    assert response.body == b"this is a/c\n"


@pytest.mark.parametrize(
    "target",
    [
        b"/../secret.txt",
        b"/a/../../secret.txt",
        b"/a/b/../../../secret.txt",
        b"/%2e%2e/secret.txt",
        b"/%2E%2E/secret.txt",
        b"/.%2e/secret.txt",
        b"/%2e./secret.txt",
        b"/a/%2e%2e/%2e%2e/secret.txt",
        b"/..%2fsecret.txt",
        b"/a%2f..%2f..%2fsecret.txt",
        b"/a/..%2F..%2Fsecret.txt",
        b"/..\\secret.txt",
        b"/a/..%5c..%5csecret.txt",
        b"/%5c..%5csecret.txt",
        b"/secret.txt%00",
        b"/a/c.txt%00.html",
        b"/%00",
        b"/escape-dir%2fsecret.txt",
        b"/%2e%2e%2fsecret.txt",
        b"/%252e%252e/secret.txt",
        b"http://127.0.0.1/../secret.txt",
        b"../secret.txt",
        b"secret.txt",
        b"/a/c.txt/../../../secret.txt",
        b"/\xff/../../secret.txt",
    ],
)
def test_escape_attempts_refused(server, target):
    """A path climbing out of the root or holding an encoded slash, backslash or NUL gets 400 or 404, never the secret."""
    response = get(server, target)
    assert response.status in (400, 404)
    assert SECRET not in response.raw


@pytest.mark.parametrize("target", [b"/listed?\xff", b"/a/\xc3\xa9", b"/listed\xff/", b"/listed/\xff"])
def test_raw_non_ascii_paths_never_500(server, target):
    """Raw non-ASCII bytes in the request target never cause a 500."""
    response = get(server, target)
    assert response.status < 500


def test_directory_changed_between_requests_is_seen_as_it_is_now(server, root):
    """
    A directory a request passes through is looked at afresh each time,
    though its resource is kept: replaced by a symlink out of the root, by
    a file, removed, given a new index, or restored, the answer follows.
    """
    moving = root / "moving"
    moving.mkdir()
    (moving / "x.txt").write_text("inside\n")
    write_script(moving, "run.sh", "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nran\\n'\n")
    try:
        assert get(server, "/moving/x.txt").body == b"inside\n"
        assert get(server, "/moving/run.sh").body == b"ran\n"
        assert b'href="x.txt"' in get(server, "/moving/").body
        (moving / "index.html").write_text("<p>new index</p>")
        assert get(server, "/moving/").body == b"<p>new index</p>"
        shutil.rmtree(moving)
        moving.symlink_to(root.parent)
        for target in ("/moving/secret.txt", "/moving/", "/moving/root/hello.txt"):
            response = get(server, target)
            assert response.status == 404, target
            assert SECRET not in response.body
        moving.unlink()
        moving.write_text("now a file\n")
        assert get(server, "/moving/x.txt").status == 404
        assert get(server, "/moving").body == b"now a file\n"
        moving.unlink()
        assert get(server, "/moving/x.txt").status == 404
        moving.mkdir()
        (moving / "x.txt").write_text("back\n")
        assert get(server, "/moving/x.txt").body == b"back\n"
    finally:
        if moving.is_symlink() or moving.is_file():
            moving.unlink()
        shutil.rmtree(moving, ignore_errors=True)
