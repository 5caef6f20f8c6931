"""Tests for cgiserve.environ: request facts -> a CGI script's environment and argv (RFC 3875)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from cgiserve.environ import (
    SAFE_PATH,
    EnvironSettings,
    RequestFacts,
    build_argv,
    build_environ,
    header_variable,
    search_words,
    wants_form_argv,
)

FACTS = RequestFacts(
    method=b"GET",
    request_uri=b"/cgi-bin/env.py/extra/path?a=1&b=%20",
    query=b"a=1&b=%20",
    protocol=b"HTTP/1.1",
    headers=((b"Host", (b"example.test:8080",)),),
    script_name="/cgi-bin/env.py",
    script_filename="/srv/www/cgi-bin/env.py",
    path_info="/extra/path",
    document_root="/srv/www",
    remote_addr="192.0.2.7",
    remote_port=51234,
    server_addr="198.51.100.1",
    server_port=8080,
    server_name="example.test",
    scheme="http",
    request_id="req-1",
)

SETTINGS = EnvironSettings(server_software="cgiserve/0.1.0")


def environ(headers=(), settings=SETTINGS, **changes):
    """The environment for FACTS with the given request headers and other changes."""
    return build_environ(replace(FACTS, headers=tuple(headers), **changes), settings)


def test_environment_is_exactly_the_cgi_variables():
    """A plain GET gets the RFC 3875 meta-variables, the common extensions, and nothing else."""
    assert build_environ(FACTS, SETTINGS) == {
        "PATH": SAFE_PATH,
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "cgiserve/0.1.0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "example.test",
        "SERVER_ADDR": "198.51.100.1",
        "SERVER_PORT": "8080",
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/cgi-bin/env.py/extra/path?a=1&b=%20",
        "REQUEST_SCHEME": "http",
        "QUERY_STRING": "a=1&b=%20",
        "SCRIPT_NAME": "/cgi-bin/env.py",
        "SCRIPT_FILENAME": "/srv/www/cgi-bin/env.py",
        "PATH_INFO": "/extra/path",
        "PATH_TRANSLATED": "/srv/www/extra/path",
        "DOCUMENT_ROOT": "/srv/www",
        "REMOTE_ADDR": "192.0.2.7",
        "REMOTE_HOST": "192.0.2.7",
        "REMOTE_PORT": "51234",
        "REQUEST_ID": "req-1",
        "REDIRECT_STATUS": "200",
        "HTTP_HOST": "example.test:8080",
    }


# (changes to FACTS, variable, expected value or None for absent)
META_VARIABLES = [
    ({}, "CONTENT_LENGTH", None),
    ({"content_length": 0}, "CONTENT_LENGTH", "0"),
    ({"content_length": 12}, "CONTENT_LENGTH", "12"),
    ({}, "CONTENT_TYPE", None),
    ({"content_type": b"text/plain; charset=utf-8"}, "CONTENT_TYPE", "text/plain; charset=utf-8"),
    ({"method": b"POST"}, "REQUEST_METHOD", "POST"),
    ({"protocol": b"HTTP/1.0"}, "SERVER_PROTOCOL", "HTTP/1.0"),
    ({"query": b""}, "QUERY_STRING", ""),
    # RFC 3875 4.1.7: QUERY_STRING is the raw, still-encoded query.
    ({"query": b"q=a+b%26c"}, "QUERY_STRING", "q=a+b%26c"),
    ({"path_info": ""}, "PATH_INFO", ""),
    # RFC 3875 4.1.6: no PATH_TRANSLATED without PATH_INFO.
    ({"path_info": ""}, "PATH_TRANSLATED", None),
    ({"path_info": "/x y"}, "PATH_TRANSLATED", "/srv/www/x y"),
    ({"document_root": "/srv/www/"}, "PATH_TRANSLATED", "/srv/www/extra/path"),
    ({"document_root": "/"}, "PATH_TRANSLATED", "/extra/path"),
    ({"remote_addr": "::1"}, "REMOTE_HOST", "::1"),
    ({"server_port": None}, "SERVER_PORT", None),
    ({"remote_port": None}, "REMOTE_PORT", None),
    ({"scheme": "http"}, "HTTPS", None),
    ({"scheme": "https"}, "HTTPS", "on"),
    ({"scheme": "https"}, "REQUEST_SCHEME", "https"),
    ({}, "AUTH_TYPE", None),
    ({}, "REMOTE_USER", None),
    ({"auth_type": "Basic"}, "AUTH_TYPE", None),
    ({"remote_user": "alice"}, "REMOTE_USER", "alice"),
    ({"remote_user": "alice"}, "AUTH_TYPE", "Basic"),
    ({"remote_user": "alice", "auth_type": "Digest"}, "AUTH_TYPE", "Digest"),
]


@pytest.mark.parametrize(("changes", "variable", "value"), META_VARIABLES)
def test_meta_variable_follows_the_request(changes, variable, value):
    """Each meta-variable carries its request fact, and is absent when RFC 3875 says so."""
    assert environ(FACTS.headers, **changes).get(variable) == value


# (request headers, settings, the variables they add)
HEADERS = [
    ([(b"User-Agent", (b"curl/8",))], SETTINGS, {"HTTP_USER_AGENT": "curl/8"}),
    ([(b"X-Forwarded-For", (b"192.0.2.1",))], SETTINGS, {"HTTP_X_FORWARDED_FOR": "192.0.2.1"}),
    ([(b"x-lower-case", (b"v",))], SETTINGS, {"HTTP_X_LOWER_CASE": "v"}),
    ([(b"X-Digit-2", (b"v",))], SETTINGS, {"HTTP_X_DIGIT_2": "v"}),
    ([(b"Accept", (b"text/html", b"*/*"))], SETTINGS, {"HTTP_ACCEPT": "text/html, */*"}),
    ([(b"Cookie", (b"a=1", b"b=2"))], SETTINGS, {"HTTP_COOKIE": "a=1; b=2"}),
    ([(b"cookie", (b"a=1", b"b=2"))], SETTINGS, {"HTTP_COOKIE": "a=1; b=2"}),
    ([(b"X-Empty", (b"",))], SETTINGS, {"HTTP_X_EMPTY": ""}),
    # A '_' could spoof its '-' twin; any other character would map to '_'.
    ([(b"X_Forwarded_For", (b"evil",))], SETTINGS, {}),
    ([(b"X.Dotted", (b"v",))], SETTINGS, {}),
    ([(b"X Space", (b"v",))], SETTINGS, {}),
    ([(b"X-Caf\xc3\xa9", (b"v",))], SETTINGS, {}),
    ([(b"", (b"v",))], SETTINGS, {}),
    (
        [(b"X-Forwarded-For", (b"good",)), (b"X_Forwarded_For", (b"evil",))],
        SETTINGS,
        {"HTTP_X_FORWARDED_FOR": "good"},
    ),
    # httpoxy (CVE-2016-5385): HTTP_PROXY would be read as the script's proxy.
    ([(b"Proxy", (b"http://evil:8080",))], SETTINGS, {}),
    ([(b"proxy", (b"http://evil:8080",))], SETTINGS, {}),
    # The body's own headers are CONTENT_TYPE and CONTENT_LENGTH, from the facts only.
    ([(b"Content-Type", (b"text/evil",)), (b"Content-Length", (b"99",))], SETTINGS, {}),
    ([(b"Authorization", (b"Basic YTpi",))], SETTINGS, {}),
    ([(b"authorization", (b"Basic YTpi",))], SETTINGS, {}),
    (
        [(b"Authorization", (b"Basic YTpi",))],
        replace(SETTINGS, pass_auth=True),
        {"HTTP_AUTHORIZATION": "Basic YTpi"},
    ),
    # Only the server's own authentication sets these, never a client header.
    (
        [(b"Remote-User", (b"root",)), (b"Auth-Type", (b"Basic",))],
        SETTINGS,
        {"HTTP_REMOTE_USER": "root", "HTTP_AUTH_TYPE": "Basic"},
    ),
]


@pytest.mark.parametrize(("headers", "settings", "expected"), HEADERS)
def test_request_headers_become_http_variables(headers, settings, expected):
    """Each passable request header becomes one HTTP_* variable; the others are dropped."""
    plain = environ((), settings)
    env = environ(headers, settings)
    assert {name: value for name, value in env.items() if plain.get(name) != value} == expected
    assert plain.keys() <= env.keys()


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        (b"Host", "HTTP_HOST"),
        (b"if-none-match", "HTTP_IF_NONE_MATCH"),
        (b"X-A-1", "HTTP_X_A_1"),
        (b"X_A", None),
        (b"X:A", None),
        (b"X-A\n", None),
        (b"X=A", None),
        (b"\xff", None),
        (b"", None),
    ],
)
def test_header_variable_maps_dashes_and_drops_the_rest(name, variable):
    """Letters, digits and '-' map to HTTP_* with '-' as '_'; any other name gives None."""
    assert header_variable(name) == variable


def test_body_headers_come_from_the_facts_not_the_client_headers():
    """CONTENT_TYPE and CONTENT_LENGTH are the facts' values even when headers disagree."""
    env = environ(
        [(b"Content-Type", (b"text/evil",)), (b"Content-Length", (b"99",))],
        content_type=b"text/plain",
        content_length=5,
    )
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"]) == ("text/plain", "5")


def test_server_environment_does_not_leak(monkeypatch):
    """Nothing of the server's own environment reaches a script unless the operator passes it."""
    monkeypatch.setenv("CGISERVE_SENTINEL", "leaked")
    monkeypatch.setenv("PATH", "/opt/evil/bin")
    env = build_environ(FACTS, SETTINGS)
    assert "CGISERVE_SENTINEL" not in env
    assert env["PATH"] == SAFE_PATH


def test_inherited_and_extra_variables_are_passed():
    """Variables the operator inherits or sets appear; an inherited PATH replaces the safe one."""
    settings = replace(
        SETTINGS,
        inherited={"PATH": "/opt/bin:/usr/bin", "LANG": "C.UTF-8"},
        extra={"APP_MODE": "test"},
    )
    env = build_environ(FACTS, settings)
    assert (env["PATH"], env["LANG"], env["APP_MODE"]) == ("/opt/bin:/usr/bin", "C.UTF-8", "test")


def test_extra_variable_overrides_inherited_one():
    """A variable the operator sets wins over the same one inherited from the server."""
    settings = replace(SETTINGS, inherited={"PATH": "/inherited"}, extra={"PATH": "/set"})
    assert build_environ(FACTS, settings)["PATH"] == "/set"


def test_client_cannot_override_meta_variables():
    """A header whose HTTP_* name resembles a meta-variable never replaces the meta-variable."""
    env = environ([(b"Remote-Addr", (b"10.0.0.1",)), (b"Path", (b"/evil",))])
    assert (env["REMOTE_ADDR"], env["PATH"]) == ("192.0.2.7", SAFE_PATH)
    assert (env["HTTP_REMOTE_ADDR"], env["HTTP_PATH"]) == ("10.0.0.1", "/evil")


def test_undecodable_bytes_survive_the_round_trip():
    """Header, query, URI and method bytes that are not UTF-8 come back intact through os.fsencode."""
    raw = b"caf\xe9 \xff\x80 ok"
    env = environ(
        [(b"X-Raw", (raw, b"\xc3\xa9"))],
        query=b"q=\xe9",
        request_uri=b"/s?q=\xe9",
        content_type=b"text/plain; charset=latin-1; x=\xe9",
    )
    assert os.fsencode(env["HTTP_X_RAW"]) == raw + b", \xc3\xa9"
    assert os.fsencode(env["QUERY_STRING"]) == b"q=\xe9"
    assert os.fsencode(env["REQUEST_URI"]) == b"/s?q=\xe9"
    assert os.fsencode(env["CONTENT_TYPE"]) == b"text/plain; charset=latin-1; x=\xe9"


def test_environment_holds_only_strings():
    """Every name and value is a str, as os.execve and spawnProcess need."""
    env = environ(
        [(b"X-A", (b"1",))],
        content_length=3,
        content_type=b"text/plain",
        remote_user="alice",
        scheme="https",
    )
    assert all(isinstance(name, str) and isinstance(value, str) for name, value in env.items())


# (method, content type, content length, whether the body also goes to argv[1])
FORM_ARGV = [
    (b"POST", b"application/x-www-form-urlencoded", 3, True),
    (b"POST", b"application/x-www-form-urlencoded", 0, True),
    (b"POST", b"application/x-www-form-urlencoded; charset=UTF-8", 3, True),
    (b"POST", b"application/x-www-form-urlencoded;charset=utf-8", 3, True),
    (b"POST", b"Application/X-WWW-Form-URLEncoded", 3, True),
    (b"POST", b" application/x-www-form-urlencoded ; charset=utf-8", 3, True),
    (b"POST", b"application/x-www-form-urlencoded", 64 * 1024, True),
    (b"POST", b"application/x-www-form-urlencoded", 64 * 1024 + 1, False),
    (b"POST", b"application/x-www-form-urlencoded", None, False),
    (b"POST", None, 3, False),
    (b"POST", b"multipart/form-data; boundary=x", 3, False),
    (b"POST", b"text/plain", 3, False),
    (b"POST", b"application/x-www-form-urlencodedx", 3, False),
    (b"POST", b"application/json; x=application/x-www-form-urlencoded", 3, False),
    (b"PUT", b"application/x-www-form-urlencoded", 3, False),
    (b"GET", b"application/x-www-form-urlencoded", 3, False),
]


@pytest.mark.parametrize(("method", "content_type", "content_length", "wanted"), FORM_ARGV)
def test_only_a_small_urlencoded_post_goes_to_argv(method, content_type, content_length, wanted):
    """A url-encoded form POST of at most 64 KiB, and nothing else, is passed as argv[1]."""
    assert wants_form_argv(method, content_type, content_length) is wanted


# (query, RFC 3875 4.4 search words)
SEARCH_WORDS = [
    (b"word", [b"word"]),
    (b"two+words", [b"two", b"words"]),
    (b"a+b+c", [b"a", b"b", b"c"]),
    (b"caf%C3%A9+%41", [b"caf\xc3\xa9", b"A"]),
    (b"a%20b", [b"a b"]),
    (b"a%2Bb", [b"a+b"]),
    (b"a%3Db", [b"a=b"]),
    (b"x-y", [b"x-y"]),
    (b"", []),
    (b"a=1", []),
    (b"a+b=1", []),
    (b"=", []),
    (b"-rf", []),
    (b"a+-rf", []),
    (b"%2Drf", []),
    (b"a+%2D", []),
    (b"a%00b", []),
    (b"a+%00", []),
    (b"a++b", []),
    (b"+a", []),
    (b"a+", []),
]


@pytest.mark.parametrize(("query", "words"), SEARCH_WORDS)
def test_search_words_come_only_from_an_indexed_query(query, words):
    """A query without '=' splits on '+' into percent-decoded words, unless a word is empty, an option or holds NUL."""
    assert search_words(query) == words


# (build_argv keyword arguments, argv)
ARGV = [
    ({}, [b"/s/env.py"]),
    ({"interpreter": "/usr/bin/python3"}, [b"/usr/bin/python3", b"/s/env.py"]),
    ({"form_body": b"a=1&b=2"}, [b"/s/env.py", b"a=1&b=2"]),
    ({"form_body": b""}, [b"/s/env.py", b""]),
    (
        {"interpreter": "/usr/bin/perl", "form_body": b"a=1"},
        [b"/usr/bin/perl", b"/s/env.py", b"a=1"],
    ),
    ({"query": b"a+b"}, [b"/s/env.py"]),
    ({"query": b"a+b", "isindex": True}, [b"/s/env.py", b"a", b"b"]),
    ({"query": b"a%20b", "isindex": True}, [b"/s/env.py", b"a b"]),
    ({"query": b"a=b", "isindex": True}, [b"/s/env.py"]),
    ({"query": b"a+-x", "isindex": True}, [b"/s/env.py"]),
    ({"query": b"a%00", "isindex": True}, [b"/s/env.py"]),
    (
        {"interpreter": "/usr/bin/python3", "query": b"q", "isindex": True},
        [b"/usr/bin/python3", b"/s/env.py", b"q"],
    ),
    # A form body takes argv[1]; search words never join it.
    ({"form_body": b"x", "query": b"a+b", "isindex": True}, [b"/s/env.py", b"x"]),
]


@pytest.mark.parametrize(("arguments", "argv"), ARGV)
def test_argv_is_interpreter_script_then_form_or_search_words(arguments, argv):
    """The command line is the mapped interpreter, the script, then the form body or the enabled search words."""
    assert build_argv("/s/env.py", **arguments) == argv


def test_argv_keeps_undecodable_script_names():
    """A script path that is not UTF-8 is passed as its original bytes."""
    script = os.fsdecode(b"/s/caf\xe9.py")
    assert build_argv(script) == [b"/s/caf\xe9.py"]
