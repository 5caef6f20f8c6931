"""Tests for cgiserve.paths: raw request path -> normalised segments."""

from __future__ import annotations

import pytest

from cgiserve.paths import BadPath, path_segments, split_target

# (raw path, segments the resource tree walks)
SEGMENTS = [
    (b"/", [b""]),
    (b"/a", [b"a"]),
    (b"/a/b", [b"a", b"b"]),
    (b"/dir/", [b"dir", b""]),
    (b"/a/b/", [b"a", b"b", b""]),
    # RFC 3986 5.2.4: dot-segments.
    (b"/a/b/../c", [b"a", b"c"]),
    (b"/./a", [b"a"]),
    (b"/a/./b", [b"a", b"b"]),
    (b"/a/.", [b"a", b""]),
    (b"/.", [b""]),
    (b"/a/..", [b""]),
    (b"/a/../", [b""]),
    (b"/a/b/..", [b"a", b""]),
    (b"/a/../b", [b"b"]),
    (b"/a/b/../../c/", [b"c", b""]),
    # Empty segments fold away.
    (b"//", [b""]),
    (b"//a", [b"a"]),
    (b"/a//b", [b"a", b"b"]),
    (b"/a//", [b"a", b""]),
    # Percent-decoding comes before dot handling.
    (b"/a/%2e%2e/b", [b"b"]),
    (b"/a/.%2e/b", [b"b"]),
    (b"/a/%2E%2E", [b""]),
    (b"/%2e/a", [b"a"]),
    (b"/%41%20b", [b"A b"]),
    (b"/caf%C3%A9", [b"caf\xc3\xa9"]),
    # Dots that are not whole segments are names.
    (b"/...", [b"..."]),
    (b"/.hidden", [b".hidden"]),
    (b"/a../b", [b"a..", b"b"]),
    # RFC 9112 3.2.2: the absolute form names the same path.
    (b"http://host/a", [b"a"]),
    (b"http://host:8080/a/b/", [b"a", b"b", b""]),
    (b"HTTPS://host/", [b""]),
    (b"http://host", [b""]),
]


@pytest.mark.parametrize(("raw", "segments"), SEGMENTS, ids=[raw.decode("ascii") for raw, _ in SEGMENTS])
def test_path_segments_are_decoded_and_normalised(raw, segments):
    """A path becomes its percent-decoded segments with dot-segments removed."""
    assert path_segments(raw) == segments


# (raw path, part of the BadPath message)
REFUSED = [
    (b"/..", "climbs above"),
    (b"/../a", "climbs above"),
    (b"/a/../..", "climbs above"),
    (b"/a/../../b", "climbs above"),
    (b"/%2e%2e", "climbs above"),
    (b"/%2e%2e/etc/passwd", "climbs above"),
    (b"/.%2e/a", "climbs above"),
    (b"/%2E%2E/a", "climbs above"),
    (b"/a/%2e%2e/%2e%2e", "climbs above"),
    (b"http://host/../a", "climbs above"),
    (b"/a%2Fb", "slash, backslash or NUL"),
    (b"/a%2fb", "slash, backslash or NUL"),
    (b"/%2F", "slash, backslash or NUL"),
    (b"/a\\b", "slash, backslash or NUL"),
    (b"/..\\a", "slash, backslash or NUL"),
    (b"/a%5Cb", "slash, backslash or NUL"),
    (b"/a%5cb", "slash, backslash or NUL"),
    (b"/a%00b", "slash, backslash or NUL"),
    (b"/a\0b", "slash, backslash or NUL"),
    (b"a", "does not start with '/'"),
    (b"a/b", "does not start with '/'"),
    (b"", "does not start with '/'"),
    (b"*", "does not start with '/'"),
    (b"../a", "does not start with '/'"),
    (b"%2Fa", "does not start with '/'"),
    (b"http:///a", "without a host"),
    (b"http://user@host/a", "with userinfo"),
]


@pytest.mark.parametrize(("raw", "message"), REFUSED, ids=[repr(raw) for raw, _ in REFUSED])
def test_path_that_cannot_name_a_file_under_the_root_is_refused(raw, message):
    """A path that climbs above the root, hides a separator or NUL, or is not absolute raises BadPath."""
    with pytest.raises(BadPath, match=message):
        path_segments(raw)


@pytest.mark.parametrize(
    ("raw", "split"),
    [
        (b"/a/b", (None, b"/a/b")),
        (b"*", (None, b"*")),
        (b"http://Example.org/x.cgi", (b"Example.org", b"/x.cgi")),
        (b"https://example.org:8443/a/", (b"example.org:8443", b"/a/")),
        (b"http://example.org", (b"example.org", b"/")),
        (b"http://[::1]:8080/a", (b"[::1]:8080", b"/a")),
    ],
)
def test_split_target_gives_the_authority_of_an_absolute_form(raw, split):
    """An absolute-form target is its authority and its path (RFC 9112 3.2.2); any other target has no authority."""
    assert split_target(raw) == split


def test_bad_path_is_a_value_error():
    """BadPath subclasses ValueError, so callers may catch either."""
    assert issubclass(BadPath, ValueError)


def test_segments_are_a_fresh_list_each_time():
    """The resource tree consumes the segments it is given; the next request for the path gets them all."""
    segments = path_segments(b"/a/b")
    segments.pop()
    assert path_segments(b"/a/b") == [b"a", b"b"]
