# -*- test-case-name: tests.test_auth -*-
"""HTTP Basic authentication (RFC 7617) against an htpasswd file of bcrypt entries, for all paths or some."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections import OrderedDict

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.web import pages, resource, server
from twisted.web.guard import BasicCredentialFactory
from zope.interface import implementer

from cgiserve.addresses import client_end

# bcrypt reads at most 72 bytes of a password; Apache's htpasswd -B
# ignores the rest, and pyca bcrypt 5 refuses longer ones outright.
BCRYPT_MAX_PASSWORD_BYTES = 72

# bcrypt is slow by design (a quarter of a second at cost 12). Successful
# checks are remembered, keyed on the user, the password and the user's
# current hash, so that a changed or removed entry never matches again.
CACHE_ENTRIES = 1024

_BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")


def parse_htpasswd(text: bytes) -> tuple[dict[bytes, bytes], list[str]]:
    """
    The users of an htpasswd file and their bcrypt hashes, and what was
    skipped and why: one problem per line that is not C{user:bcrypt-hash}
    (C{htpasswd -B} writes C{$2y$}, the same algorithm as C{$2b$}).
    Blank lines and lines starting with C{#} are ignored.
    """
    users: dict[bytes, bytes] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        user, found, hashed = line.partition(b":")
        if not found or not user:
            problems.append(f"line {number}: not user:hash")
        elif not hashed.startswith(_BCRYPT_PREFIXES):
            problems.append(f"line {number}: {os.fsdecode(user)!r} has no bcrypt hash (write it with htpasswd -B)")
        else:
            users[user] = b"$2b$" + hashed[4:] if hashed.startswith(b"$2y$") else hashed
    return users, problems


def covers(prefixes: list[list[bytes]], segments: list[bytes]) -> bool:
    """
    Whether a normalised request path (its segments) lies under one of the
    prefixes, segment by segment: C{/private} covers C{/private},
    C{/private/} and C{/private/x}, not C{/privateer}.
    """
    return any(segments[: len(prefix)] == prefix for prefix in prefixes)


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    """
    Checks user names and passwords against an htpasswd file.

    The file is read again whenever its size, modification time or inode
    changes, so users can be added and removed without a restart; if it
    cannot be read, nobody gets in until it can. bcrypt runs in the
    reactor's thread pool, never on the reactor thread.
    """

    credentialInterfaces = (IUsernamePassword,)
    _log = Logger()

    def __init__(self, path: str, reactor=None) -> None:
        import bcrypt  # the "auth" extra; imported now, while the server can still read it

        if reactor is None:
            from twisted.internet import reactor
        self.path = path
        self.reactor = reactor
        self._checkpw = bcrypt.checkpw
        self._users: dict[bytes, bytes] = {}
        self._stamp = None
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_key = secrets.token_bytes(32)
        self.users()

    def users(self) -> dict[bytes, bytes]:
        """The file's users and hashes, read again if the file has changed."""
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if stamp == self._stamp:
                return self._users
            with open(self.path, "rb") as f:
                text = f.read()
        except OSError as e:
            if self._stamp is not None:
                self._log.error("Cannot read the htpasswd file {path}: {error}", path=self.path, error=str(e))
            self._users, self._stamp = {}, None
            return self._users
        self._users, problems = parse_htpasswd(text)
        self._stamp = stamp
        for problem in problems:
            self._log.warn("{path} {problem}; skipped", path=self.path, problem=problem)
        self._log.info("{path}: {count} users", path=self.path, count=len(self._users))
        return self._users

    def _verify(self, password: bytes, hashed: bytes) -> bool:
        try:
            return self._checkpw(password[:BCRYPT_MAX_PASSWORD_BYTES], hashed)
        except ValueError:  # a malformed hash
            return False

    def _key(self, user: bytes, password: bytes, hashed: bytes) -> bytes:
        """The cache key for a user's password under the user's current hash."""
        return hmac.new(self._cache_key, b"\0".join((user, hashed, password)), hashlib.sha256).digest()

    def cached(self, credentials, users: dict[bytes, bytes] | None = None) -> bool:
        """Whether these credentials passed a check lately (and the user's entry has not changed since)."""
        hashed = (self.users() if users is None else users).get(credentials.username)
        if hashed is None:
            return False
        key = self._key(credentials.username, credentials.password, hashed)
        if key not in self._cache:
            return False
        self._cache.move_to_end(key)
        return True

    def requestAvatarId(self, credentials) -> defer.Deferred:
        """The user name, or a failure with L{UnauthorizedLogin} saying why not."""
        users = self.users()
        if self.cached(credentials, users):
            return defer.succeed(credentials.username)
        user, password = credentials.username, credentials.password
        hashed = users.get(user)
        if hashed is None:
            # Spend the time a real check takes, so that response times do
            # not tell which user names exist.
            decoy = next(iter(users.values()), None)
            checking = self._in_thread(password, decoy) if decoy else defer.succeed(False)
            return checking.addCallback(self._refuse, f"unknown user {os.fsdecode(user)!r}")
        key = self._key(user, password, hashed)

        def checked(ok: bool) -> bytes:
            if not ok:
                raise UnauthorizedLogin(f"wrong password for {os.fsdecode(user)!r}")
            self._cache[key] = None
            if len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
            return user

        return self._in_thread(password, hashed).addCallback(checked)

    def _in_thread(self, password: bytes, hashed: bytes) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._verify, password, hashed)

    @staticmethod
    def _refuse(_, reason: str):
        raise UnauthorizedLogin(reason)


def _quoted(value: str) -> str:
    """An RFC 9110 5.6.4 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class BasicAuthGuard(resource.Resource):
    """
    The document root behind HTTP Basic authentication.

    Requests for paths under the protected prefixes (all paths, without
    any) need a user and password that the checker accepts; scripts then
    see AUTH_TYPE=Basic and REMOTE_USER. Prefixes are matched against the
    normalised path, after dot-segments and empty segments are gone, so
    C{/public/../private/x} and C{//private/x} are C{/private/x}. Anything
    else gets 401 with a C{WWW-Authenticate} challenge, and one log line.
    """

    _log = Logger()

    def __init__(self, wrapped, checker, realm: str, prefixes: list[list[bytes]] | None = None) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.checker = checker
        self.challenge = f"Basic realm={_quoted(realm)}, charset=\"UTF-8\"".encode("utf-8")
        self.credential_factory = BasicCredentialFactory(realm.encode("utf-8"))
        self.prefixes = prefixes if prefixes else [[]]

    def getChildWithDefault(self, path, request):
        if not covers(self.prefixes, request.prepath + request.postpath):
            return self.wrapped.getChildWithDefault(path, request)
        header = request.getHeader(b"authorization")
        if header is None:
            return _Refusal(self, "no credentials", warn=False)
        scheme, _, encoded = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return _Refusal(self, f"{scheme[:20].decode('latin-1')!r} is not Basic authentication")
        try:
            credentials = self.credential_factory.decode(encoded.strip(), request)
        except LoginFailed:
            return _Refusal(self, "malformed Basic credentials")
        if self.checker.cached(credentials):
            # No detour through the thread pool: a script behind it can
            # still stream its upload.
            return self.allowed(credentials.username, path, request)
        # The check starts when the request is rendered, not when it is
        # only looked up (as when deciding whether to stream its body).
        return _Checking(self, path, credentials)

    def allowed(self, user: bytes, path: bytes, request):
        """The wrapped root's child, for a request as C{user}."""
        request.remote_user = os.fsdecode(user)
        return self.wrapped.getChildWithDefault(path, request)

    def refuse(self, request, reason: str, warn: bool) -> bytes:
        """Log why a request is refused (as a warning, unless it simply had no credentials) and give the 401 page."""
        emit = self._log.warn if warn else self._log.info
        emit(
            "[{request_id}] 401 for {path} from {client}: {reason}",
            request_id=request.request_id,
            path=request.path.decode("latin-1"),
            client=client_end(request.getClientAddress())[0],
            reason=reason,
        )
        request.setHeader(b"WWW-Authenticate", self.challenge)
        return pages.errorPage(401, "Unauthorized", "This page needs a user name and password.").render(request)


class _Refusal(resource.Resource):
    """A 401 answer, logged when it is rendered (not when a request is only looked up)."""

    isLeaf = True

    def __init__(self, guard: BasicAuthGuard, reason: str, warn: bool = True) -> None:
        super().__init__()
        self.guard = guard
        self.reason = reason
        self.warn = warn

    def render(self, request):
        return self.guard.refuse(request, self.reason, self.warn)


class _Checking(resource.Resource):
    """Waits for a password check, then renders the protected resource or a 401."""

    isLeaf = True
    _log = Logger()

    def __init__(self, guard: BasicAuthGuard, path: bytes, credentials) -> None:
        super().__init__()
        self.guard = guard
        self.path = path
        self.credentials = credentials

    def render(self, request):
        gone = []
        request.notifyFinish().addErrback(gone.append)
        checking = self.guard.checker.requestAvatarId(self.credentials)
        checking.addCallbacks(self._allowed, self._refused, (request, gone), None, (request, gone))
        return server.NOT_DONE_YET

    def _allowed(self, user: bytes, request, gone) -> None:
        if not gone:
            child = self.guard.allowed(user, self.path, request)
            request.render(resource.getChildForRequest(child, request))

    def _refused(self, failure, request, gone) -> None:
        if gone:
            return
        if failure.check(UnauthorizedLogin):
            request.render(_Refusal(self.guard, failure.getErrorMessage()))
        else:
            self._log.failure("[{request_id}] password check failed", failure, request_id=request.request_id)
            request.render(pages.errorPage(500, "Internal Server Error", "The password check failed."))
