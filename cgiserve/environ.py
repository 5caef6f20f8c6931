# -*- test-case-name: tests.test_environ -*-
"""Pure: the facts of one request -> a CGI script's environment and argv (RFC 3875)."""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

GATEWAY_INTERFACE = "CGI/1.1"

# What a script gets as PATH unless the operator passes the server's own:
# a fixed, safe search path rather than whatever the daemon was started with.
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

# The tutorial's convention hands a url-encoded form to the script as
# argv[1]; Linux caps a single argument at 128 KiB (MAX_ARG_STRLEN), so
# bodies above half of that go on stdin only.
MAX_FORM_ARGV_BYTES = 64 * 1024

FORM_MEDIA_TYPE = b"application/x-www-form-urlencoded"

_HEADER_NAME = re.compile(rb"[A-Za-z0-9-]+")

# Headers that never become HTTP_* variables: the body's own headers are
# CONTENT_TYPE and CONTENT_LENGTH already, and the script reads a body
# already de-chunked; "Proxy" would set HTTP_PROXY, which many HTTP
# clients read as their proxy (httpoxy, CVE-2016-5385). Given as the
# variables they would become: each stands for one name, in any case.
_NEVER_PASSED = frozenset({"HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_PROXY"})

# os.fsdecode's codec, looked up once rather than per value.
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


# Made once per script request: not frozen, as a frozen dataclass pays one
# object.__setattr__ per field in __init__; nothing changes the facts once made.
@dataclass(slots=True)
class RequestFacts:
    """
    What the server knows about one request, as plain values.

    Paths are already URL-decoded and normalised; header names and values
    are the bytes the client sent.
    """

    method: bytes
    request_uri: bytes
    query: bytes
    protocol: bytes
    headers: tuple[tuple[bytes, tuple[bytes, ...]], ...]
    script_name: str
    script_filename: str
    path_info: str
    document_root: str
    remote_addr: str
    remote_port: int | None
    server_addr: str
    server_port: int | None
    server_name: str
    scheme: str
    request_id: str
    content_length: int | None = None
    content_type: bytes | None = None
    auth_type: str | None = None
    remote_user: str | None = None


@dataclass(frozen=True)
class EnvironSettings:
    """The operator's choices that shape every script's environment."""

    server_software: str
    pass_auth: bool = False
    inherited: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)


def _text(value: bytes) -> str:
    """Decode bytes for the environment without losing any (surrogateescape), as os.fsdecode does."""
    return value.decode(_FS_ENCODING, _FS_ERRORS)


# Clients send the same few header names over and over; the cache is kept
# small, as each entry may be as long as a request head.
@functools.lru_cache(maxsize=256)
def header_variable(name: bytes) -> str | None:
    """
    The HTTP_* variable for a request header name, or None to drop it.

    Only letters, digits and '-' are allowed: a name with '_' (or any other
    character that would map to '_') could spoof its '-' twin, as in
    C{X_Forwarded_For} posing as C{X-Forwarded-For}.
    """
    if not _HEADER_NAME.fullmatch(name):
        return None
    return "HTTP_" + name.decode("ascii").upper().replace("-", "_")


def base_environ(settings: EnvironSettings) -> dict[str, str]:
    """What every script's environment starts with: the fixed PATH and what the operator passes or sets."""
    env = {"PATH": SAFE_PATH}
    env.update(settings.inherited)
    env.update(settings.extra)
    return env


def build_environ(facts: RequestFacts, settings: EnvironSettings) -> dict[str, str]:
    """
    The complete environment for a script: RFC 3875 section 4 meta-variables,
    the common extensions (REQUEST_URI, SCRIPT_FILENAME, DOCUMENT_ROOT, ...),
    one HTTP_* variable per request header, and only what the operator
    chose to pass of the server's own environment.
    """
    env = base_environ(settings)
    for name, values in facts.headers:
        variable = header_variable(name)
        if variable is None or variable in _NEVER_PASSED:
            continue
        if variable == "HTTP_AUTHORIZATION" and not settings.pass_auth:
            continue
        separator = b"; " if variable == "HTTP_COOKIE" else b", "
        env[variable] = _text(separator.join(values))
    env.update(
        GATEWAY_INTERFACE=GATEWAY_INTERFACE,
        SERVER_SOFTWARE=settings.server_software,
        SERVER_PROTOCOL=_text(facts.protocol),
        SERVER_NAME=facts.server_name,
        SERVER_ADDR=facts.server_addr,
        REQUEST_METHOD=_text(facts.method),
        REQUEST_URI=_text(facts.request_uri),
        REQUEST_SCHEME=facts.scheme,
        QUERY_STRING=_text(facts.query),
        SCRIPT_NAME=facts.script_name,
        SCRIPT_FILENAME=facts.script_filename,
        PATH_INFO=facts.path_info,
        DOCUMENT_ROOT=facts.document_root,
        REMOTE_ADDR=facts.remote_addr,
        # No reverse DNS per request: RFC 3875 4.1.9 allows the address.
        REMOTE_HOST=facts.remote_addr,
        REQUEST_ID=facts.request_id,
        # php-cgi refuses to run unless it sees this (its force-redirect guard).
        REDIRECT_STATUS="200",
    )
    if facts.server_port is not None:
        env["SERVER_PORT"] = str(facts.server_port)
    if facts.remote_port is not None:
        env["REMOTE_PORT"] = str(facts.remote_port)
    if facts.path_info:
        # RFC 3875 4.1.6: unset when PATH_INFO is empty.
        env["PATH_TRANSLATED"] = facts.document_root.rstrip("/") + facts.path_info
    if facts.content_length is not None:
        env["CONTENT_LENGTH"] = str(facts.content_length)
    if facts.content_type is not None:
        env["CONTENT_TYPE"] = _text(facts.content_type)
    if facts.scheme == "https":
        env["HTTPS"] = "on"
    if facts.remote_user is not None:
        env["AUTH_TYPE"] = facts.auth_type or "Basic"
        env["REMOTE_USER"] = facts.remote_user
    return env


def wants_form_argv(method: bytes, content_type: bytes | None, content_length: int | None) -> bool:
    """
    Whether a request's body also goes to the script as argv[1]: a
    url-encoded form POST small enough to be one argument (the tutorial's
    convention).
    """
    if method != b"POST" or content_type is None or content_length is None:
        return False
    if content_length > MAX_FORM_ARGV_BYTES:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == FORM_MEDIA_TYPE


def search_words(query: bytes) -> list[bytes]:
    """
    RFC 3875 4.4 command-line words from an "indexed" query, or [] when the
    query is not one (it holds '=') or a word could be taken for an option
    or cannot be an argument (a leading '-', a NUL).
    """
    if not query or b"=" in query:
        return []
    words = [unquote_to_bytes(word) for word in query.split(b"+")]
    if any(not word or word.startswith(b"-") or b"\0" in word for word in words):
        return []
    return words


def build_argv(
    script: str,
    interpreter: str | None = None,
    form_body: bytes | None = None,
    query: bytes = b"",
    isindex: bool = False,
) -> list[bytes]:
    """
    The script's command line: its interpreter (if mapped), the script, then
    the url-encoded form body (when given) or, if enabled, the search words.
    """
    argv = [os.fsencode(interpreter)] if interpreter else []
    argv.append(os.fsencode(script))
    if form_body is not None:
        argv.append(form_body)
    elif isindex:
        argv.extend(search_words(query))
    return argv
