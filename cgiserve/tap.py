# -*- test-case-name: tests.test_tap -*-
"""twistd glue: the cgiserve command line and the service it makes."""

from __future__ import annotations

import os
import shutil

from twisted.application import service
from twisted.python import usage

from cgiserve.config import (
    ACCESS_LOG_FORMATS,
    ACCESS_LOG_STDOUT,
    DEFAULT_INDEX_NAMES,
    SERVER_SOFTWARE,
    MiB,
    ServerConfig,
    default_max_scripts,
)
from cgiserve.drain import DELIVERY_SECONDS, Drain
from cgiserve.environ import EnvironSettings, base_environ
from cgiserve.listen import ListeningService, check_endpoint
from cgiserve.paths import BadPath, path_segments
from cgiserve.privileges import RootWarning
from cgiserve.resource import DocumentRoot
from cgiserve.runner import ScriptRunner
from cgiserve.site import Site
from cgiserve.spawn import spawn_script

DEFAULT_LISTEN = "tcp:8000:interface=127.0.0.1"

# Files twistd itself writes into its working directory by default; when
# that directory is the document root they must not be served.
_TWISTD_FILES = ("twistd.pid", "twistd.log")


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError("a number of seconds, 0 or more")
    return seconds


_seconds.coerceDoc = "Seconds, 0 or more."


def _positive_seconds(value: str) -> float:
    seconds = _seconds(value)
    if not seconds:
        raise ValueError("a number of seconds, more than 0")
    return seconds


_positive_seconds.coerceDoc = "Seconds, more than 0."


def _count(value: str) -> int:
    count = int(value)
    if count < 1:
        raise ValueError("a whole number, 1 or more")
    return count


_count.coerceDoc = "A whole number, 1 or more."


def _size(value: str) -> int:
    size = int(value)
    if size < 0:
        raise ValueError("a number of bytes, 0 or more")
    return size


_size.coerceDoc = "Bytes, 0 or more."


def _log_format(value: str) -> str:
    if value not in ACCESS_LOG_FORMATS:
        raise ValueError(" or ".join(ACCESS_LOG_FORMATS))
    return value


_log_format.coerceDoc = "One of: " + ", ".join(ACCESS_LOG_FORMATS) + "."


def _access_log(path: str) -> str:
    """The access log's absolute path, or C{-}, if twistd will be able to open it."""
    if path == ACCESS_LOG_STDOUT:
        return path
    path = os.path.abspath(path)
    if os.path.isdir(path) or not os.access(os.path.dirname(path), os.W_OK):
        raise usage.UsageError(f"--access-log {path}: not a file in a writable directory")
    return path


def _htpasswd(path: str) -> str:
    """The htpasswd file's real path, if bcrypt is installed and the file can be read."""
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        raise usage.UsageError("--htpasswd needs the bcrypt package: pip install 'cgiserve[auth]'") from None
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise usage.UsageError(f"--htpasswd {path}: {e.strerror}") from None
    return os.path.realpath(path)


def _auth_prefix(prefix: str) -> list[bytes]:
    """The normalised segments of an --auth-path, without a trailing empty one."""
    try:
        segments = path_segments(prefix.encode("utf-8"))
    except BadPath as e:
        raise usage.UsageError(f"--auth-path {prefix!r}: {e}") from None
    return segments[:-1] if segments[-1] == b"" else segments


def _cgi_dir(root: str, name: str) -> str:
    """The real path of a --cgi-dir, which must be a directory under the root (or the root)."""
    path = os.path.realpath(os.path.join(root, name.lstrip("/")))
    if not os.path.isdir(path) or not (path == root or path.startswith(root + os.sep)):
        raise usage.UsageError(f"--cgi-dir {name}: not a directory under the root {root}")
    return path


def _pair(value: str, separator: str, what: str) -> tuple[str, str]:
    name, found, rest = value.partition(separator)
    if not found or not name:
        raise usage.UsageError(f"{what} takes NAME{separator}VALUE, not {value!r}")
    return name, rest


class Options(usage.Options):
    """The cgiserve command line (C{twistd -n cgiserve --help})."""

    synopsis = "[options]"
    longdesc = "Serve a directory over HTTP: files as they are, executable files as CGI scripts (RFC 3875)."

    optParameters = [
        ["root", "r", ".", "Directory to serve."],
        ["timeout", None, 60.0, "Stop a script still running after this many seconds (0: never).", _seconds],
        ["kill-grace", None, 5.0, "Seconds between SIGTERM and SIGKILL when a script is stopped.", _seconds],
        ["max-scripts", None, None, "Scripts running at once (default: 8 per CPU core)", _count],
        ["max-queue", None, 128, "Requests that may wait for a script slot; more get 503.", _count],
        ["queue-timeout", None, 30.0, "Seconds a request may wait for a script slot before 503 (0: no limit).", _seconds],
        ["max-body", None, 100 * MiB, "Largest request body in bytes (0: no limit); larger gets 413.", _size],
        ["max-stderr", None, 64 * 1024, "Bytes of a script's stderr logged per request.", _size],
        ["idle-timeout", None, 60.0, "Close a keep-alive connection idle for this many seconds.", _positive_seconds],
        ["header-timeout", None, 20.0, "Close a connection whose request headers take longer than this.", _positive_seconds],
        ["shutdown-grace", None, 10.0, "On shutdown, seconds running scripts get before they are stopped.", _seconds],
        ["access-log", None, None, "Write one line per request to this file ('-': standard output)."],
        ["access-log-format", None, "combined", "Apache's combined, or json with script details.", _log_format],
        ["htpasswd", None, None, "Require HTTP Basic authentication with this htpasswd file (bcrypt entries)."],
        ["auth-realm", None, "cgiserve", "The realm that --htpasswd names in its 401 challenge."],
        ["warm-preload", None, None, "Modules --warm-python helpers import at start, comma-separated (empty: none)."],
    ]
    optFlags = [
        ["no-listing", None, "Answer 403 for a directory without an index file instead of listing it."],
        ["pass-auth", None, "Pass the Authorization header to scripts as HTTP_AUTHORIZATION."],
        ["no-form-argv", None, "Do not pass a url-encoded form POST body to scripts as argv[1]."],
        ["isindex-argv", None, "Pass the words of a query without '=' to scripts as arguments (RFC 3875 4.4)."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []
        self["index"] = []
        self["pass-env"] = []
        self["set-env"] = {}
        self["interpreter"] = {}
        self["auth-path"] = []
        self["cgi-dir"] = []
        self["warm-python"] = []

    def opt_listen(self, endpoint):
        """Listen on this Twisted endpoint (repeatable; default tcp:8000:interface=127.0.0.1)."""
        self["listen"].append(endpoint)

    def opt_auth_path(self, prefix):
        """Require --htpasswd authentication only under this URL path (repeatable; default: everywhere)."""
        self["auth-path"].append(prefix)

    def opt_cgi_dir(self, directory):
        """Run scripts only from this directory under the root, like Apache's ScriptAlias (repeatable)."""
        self["cgi-dir"].append(directory)

    def opt_warm_python(self, interpreter):
        """Start scripts of this Python interpreter (its path as #! lines name it) from a preloaded helper (repeatable)."""
        if not os.path.isabs(interpreter) or not os.access(interpreter, os.X_OK) or os.path.isdir(interpreter):
            raise usage.UsageError(f"--warm-python {interpreter}: not the absolute path of an executable")
        if interpreter not in self["warm-python"]:
            self["warm-python"].append(interpreter)

    def opt_index(self, name):
        """File name to serve for a directory (repeatable; default index.html, index.htm)."""
        self["index"].append(name)

    def opt_pass_env(self, name):
        """Pass this variable of the server's environment to scripts (repeatable)."""
        self["pass-env"].append(name)

    def opt_set_env(self, assignment):
        """Set NAME=VALUE in every script's environment (repeatable)."""
        name, value = _pair(assignment, "=", "--set-env")
        self["set-env"][name] = value

    def opt_interpreter(self, mapping):
        """Run files ending in EXT with PROGRAM, as in .py=python3 (repeatable)."""
        extension, program = _pair(mapping, "=", "--interpreter")
        if not extension.startswith("."):
            extension = "." + extension
        resolved = shutil.which(program) if program else None
        if resolved is None:
            raise usage.UsageError(f"--interpreter {mapping}: no program {program!r} found")
        self["interpreter"][extension] = os.path.realpath(resolved)

    def postOptions(self):
        root = os.path.realpath(self["root"])
        if not os.path.isdir(root):
            raise usage.UsageError(f"--root {self['root']}: not a directory")
        self["root"] = root
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for description in self["listen"]:
            check_endpoint(description)
        for name in self["index"]:
            if not name or "/" in name or name.startswith("."):
                raise usage.UsageError(f"--index {name!r}: not a plain file name")
        if self["access-log"] is not None:
            self["access-log"] = _access_log(self["access-log"])
        if self["htpasswd"] is not None:
            self["htpasswd"] = _htpasswd(self["htpasswd"])
        elif self["auth-path"]:
            raise usage.UsageError("--auth-path needs --htpasswd")
        self["auth-path"] = [_auth_prefix(prefix) for prefix in self["auth-path"]]
        self["cgi-dir"] = tuple(_cgi_dir(root, name) for name in self["cgi-dir"])
        if self["warm-python"]:
            # Imported only when used, like auth.
            from cgiserve import warm

            unsupported = warm.supported()
            if unsupported is not None:
                raise usage.UsageError(f"--warm-python: {unsupported}")
            if self["warm-preload"] is None:
                self["warm-preload"] = warm.DEFAULT_PRELOAD
            else:
                self["warm-preload"] = tuple(name.strip() for name in self["warm-preload"].split(",") if name.strip())
        elif self["warm-preload"] is not None:
            raise usage.UsageError("--warm-preload needs --warm-python")

    def config(self) -> ServerConfig:
        """The server configuration these options describe."""
        inherited = {name: os.environ[name] for name in self["pass-env"] if name in os.environ}
        cwd = os.getcwd()
        # Never served either: the access log and the password file.
        own_files = [self[name] for name in ("access-log", "htpasswd") if self[name] not in (None, ACCESS_LOG_STDOUT)]
        return ServerConfig(
            root=self["root"],
            environ=EnvironSettings(
                server_software=SERVER_SOFTWARE,
                pass_auth=bool(self["pass-auth"]),
                inherited=inherited,
                extra=dict(self["set-env"]),
            ),
            index_names=tuple(self["index"]) or DEFAULT_INDEX_NAMES,
            listing=not self["no-listing"],
            form_argv=not self["no-form-argv"],
            isindex_argv=bool(self["isindex-argv"]),
            interpreters=dict(self["interpreter"]),
            hidden=frozenset(os.path.realpath(os.path.join(cwd, name)) for name in (*_TWISTD_FILES, *own_files)),
            timeout=self["timeout"],
            kill_grace=self["kill-grace"],
            max_scripts=self["max-scripts"] or default_max_scripts(),
            max_queue=self["max-queue"],
            queue_timeout=self["queue-timeout"],
            max_body=self["max-body"],
            max_stderr=self["max-stderr"],
            idle_timeout=self["idle-timeout"],
            header_timeout=self["header-timeout"],
            shutdown_grace=self["shutdown-grace"],
            cgi_dirs=self["cgi-dir"],
        )


def makeService(options: Options) -> service.MultiService:
    """The warm Python helpers if any, the script runner, one HTTP service per --listen endpoint, all serving the same site, and their drain."""
    config = options.config()
    top = service.MultiService()
    spawner = spawn_script
    if options["warm-python"]:
        from cgiserve.warm import WarmPythons

        warm = WarmPythons(options["warm-python"], base_environ(config.environ), options["warm-preload"])
        warm.setServiceParent(top)
        spawner = warm.spawner
    runner = ScriptRunner(
        config.max_scripts, config.max_queue, config.queue_timeout, config.shutdown_grace, spawner=spawner
    )
    runner.setServiceParent(top)
    RootWarning().setServiceParent(top)
    root = DocumentRoot(config.root, config, runner)
    if options["htpasswd"]:
        # Imported only when used: a server without it stays smaller.
        from cgiserve.auth import BasicAuthGuard, HtpasswdChecker

        checker = HtpasswdChecker(options["htpasswd"])
        root = BasicAuthGuard(root, checker, options["auth-realm"], options["auth-path"])
    site = Site(root, config)
    if options["access-log"]:
        # Imported only when used, like auth.
        from cgiserve.accesslog import AccessLog

        site.access_log = AccessLog(options["access-log"], options["access-log-format"])
        site.access_log.setServiceParent(top)
    for description in options["listen"]:
        ListeningService(description, site).setServiceParent(top)
    # Stopping: the ports close at once, running scripts get their grace,
    # and each connection closes once its response is out.
    drain_deadline = config.shutdown_grace + config.kill_grace + DELIVERY_SECONDS
    Drain(site, drain_deadline).setServiceParent(top)
    return top
