"""End to end: X-Sendfile, a script naming a file under --sendfile-dir that the server then sends as a static file."""

from __future__ import annotations

import email.utils
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import sh, write_script
from tests.http import Connection, request
from tests.server import Server, assert_log_clean, wait_log

CONTENT = bytes(range(256)) * 40  # 10 KiB


def sendfile_script(*headers: str, body: str = "") -> str:
    """A script that answers with these header lines (the query may name the file) and exits at once."""
    lines = "".join(f'printf "%s\\r\\n" "{header}"\n' for header in headers)
    return sh(f'{lines}printf "\\r\\n"\nprintf "%s" "{body}"')


@pytest.fixture(scope="module")
def top():
    top = Path(os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-sendfile-")))
    root, downloads, outside = top / "root", top / "downloads", top / "outside"
    for directory in (root, downloads, outside, downloads / ".private"):
        directory.mkdir()
    (downloads / "data.bin").write_bytes(CONTENT)
    (downloads / "page.html").write_text("<p>page</p>\n")
    (downloads / "archive.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    (downloads / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    (downloads / ".env").write_text("SECRET=1\n")
    (downloads / ".private" / "key").write_text("private key\n")
    (outside / "secret.txt").write_text("outside secret\n")
    os.symlink(outside / "secret.txt", downloads / "escape.txt")
    d = str(downloads)
    write_script(
        root,
        "get.cgi",
        sendfile_script(
            "Content-Type: application/x-test",
            "Content-Disposition: attachment; filename=data.bin",
            "Cache-Control: private",
            "Content-Length: 3",
            f"X-Sendfile: {d}/$QUERY_STRING",
            body="the script's own body",
        ),
    )
    write_script(root, "untyped.cgi", sendfile_script(f"X-Sendfile: {d}/$QUERY_STRING"))
    write_script(root, "forbidden.cgi", sendfile_script("Status: 403 Forbidden", f"X-Sendfile: {d}/page.html"))
    write_script(root, "relative.cgi", sendfile_script("X-Sendfile: downloads/data.bin"))
    write_script(root, "absolute.cgi", sendfile_script("X-Sendfile: $QUERY_STRING"))
    write_script(root, "twice.cgi", sendfile_script(f"X-Sendfile: {d}/data.bin", f"X-Sendfile: {d}/page.html"))
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def server(top):
    server = Server(top / "root", "--sendfile-dir", str(top / "downloads")).start()
    yield server
    server.stop()


def test_the_file_is_sent_with_the_scripts_headers(server, top):
    """The file, not the script's body; the script's type, disposition and caching; the file's own length and date."""
    response = request(server.port, "GET", "/get.cgi?data.bin")
    assert response.status == 200
    assert response.body == CONTENT
    assert response.header("Content-Length") == str(len(CONTENT))
    assert response.header("Content-Type") == "application/x-test"
    assert response.header("Content-Disposition") == "attachment; filename=data.bin"
    assert response.header("Cache-Control") == "private"
    assert response.header("Accept-Ranges") == "bytes"
    modified = email.utils.parsedate_to_datetime(response.header("Last-Modified")).timestamp()
    # HTTP dates have whole seconds.
    assert abs(modified - (top / "downloads" / "data.bin").stat().st_mtime) < 1
    assert response.header("X-Sendfile") is None


def test_range_head_and_conditional_requests(server):
    """A range gets 206 and its bytes, HEAD the headers alone, a fresh copy 304, as for a static file."""
    response = request(server.port, "GET", "/get.cgi?data.bin", [("Range", "bytes=10-19")])
    assert (response.status, response.body) == (206, CONTENT[10:20])
    assert response.header("Content-Range") == f"bytes 10-19/{len(CONTENT)}"
    response = request(server.port, "HEAD", "/get.cgi?data.bin")
    assert (response.status, response.body, response.header("Content-Length")) == (200, b"", str(len(CONTENT)))
    later = email.utils.formatdate(time.time() + 3600, usegmt=True)
    response = request(server.port, "GET", "/get.cgi?data.bin", [("If-Modified-Since", later)])
    assert (response.status, response.body) == (304, b"")


def test_post_and_keep_alive(server):
    """A POST may answer with a file too, and the connection serves on afterwards."""
    with Connection(server.port) as connection:
        for _ in range(3):
            response = connection.request("POST", "/get.cgi?page.html", body=b"a=1")
            assert (response.status, response.body) == (200, b"<p>page</p>\n")
        assert connection.request("GET", "/get.cgi?data.bin").body == CONTENT


def test_a_large_file_arrives_whole(server, top):
    response = request(server.port, "GET", "/untyped.cgi?big.bin")
    assert response.status == 200
    assert response.body == (top / "downloads" / "big.bin").read_bytes()


def test_without_a_type_the_name_gives_one_and_no_encoding(server):
    """No Content-Type from the script: one from the file's name, and never a Content-Encoding."""
    response = request(server.port, "GET", "/untyped.cgi?page.html")
    assert (response.status, response.header("Content-Type")) == (200, "text/html")
    response = request(server.port, "GET", "/untyped.cgi?archive.tar.gz")
    assert response.status == 200 and response.header("Content-Encoding") is None
    assert response.body == b"\x1f\x8b not really gzip"


def test_another_status_sends_the_file_whole(server):
    """A Status other than 200 is kept and the file goes whole, whatever Range the client asks for."""
    response = request(server.port, "GET", "/forbidden.cgi", [("Range", "bytes=0-1")])
    assert (response.status, response.body) == (403, b"<p>page</p>\n")
    assert response.header("Content-Length") == "12"


@pytest.mark.parametrize(
    ("target", "status", "reason"),
    [
        ("/absolute.cgi?{top}/outside/secret.txt", 502, "outside every --sendfile-dir"),
        ("/get.cgi?../outside/secret.txt", 502, "outside every --sendfile-dir"),
        ("/get.cgi?escape.txt", 502, "a symlink out of every --sendfile-dir"),
        ("/get.cgi?.env", 502, "a dotfile"),
        ("/get.cgi?.private/key", 502, "a dotfile"),
        ("/get.cgi?missing.bin", 404, "no such file"),
        ("/relative.cgi", 502, "not an absolute path"),
        ("/twice.cgi", 502, "more than one X-Sendfile header"),
    ],
)
def test_refused_with_a_status_and_a_log_line(server, top, target, status, reason):
    """A file the script may not name gets 502 (404 if missing) and one log line; never the file, nor the script's body."""
    response = request(server.port, "GET", target.format(top=top))
    assert response.status == status
    for secret in (b"outside secret", b"SECRET", b"private key", b"the script's own body"):
        assert secret not in response.body
    wait_log(server, rf"X-Sendfile .*: {reason}$")
    assert response.header("X-Sendfile") is None


def test_without_sendfile_dir_the_header_passes_through(top):
    """Without --sendfile-dir the header is the script's like any other, and so is the body."""
    with Server(top / "root") as server:
        response = request(server.port, "GET", "/get.cgi?data.bin")
        assert response.status == 200
        assert response.header("X-Sendfile") == f"{top}/downloads/data.bin"
        assert response.body == b"the"
        assert_log_clean(server)


def test_the_log_is_clean(server):
    assert_log_clean(server)
