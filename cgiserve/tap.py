# -*- test-case-name: tests.test_tap -*-
"""twistd glue: the cgiserve command line and the service it makes."""

from __future__ import annotations

import os
import resource
import shutil
import sys

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
from cgiserve.environ import EnvironSettings
from cgiserve.limits import Limits, find_prlimit
from cgiserve.listen import check_endpoint, server_endpoint
from cgiserve.sockets import SHAREABLE, shareable
from cgiserve.paths import BadPath, path_segments
from cgiserve.privileges import RootWarning

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


def _whole(value: str, least: int = 0) -> int:
    count = int(value)
    if count < least:
        raise ValueError(f"a whole number, {least} or more")
    return count


_whole.coerceDoc = "A whole number, 0 or more."


def _count(value: str) -> int:
    return _whole(value, 1)


_count.coerceDoc = "A whole number, 1 or more."

# Size suffixes, powers of 1024 as in Apache's and nginx's directives.
_SIZE_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def _size(value: str) -> int:
    number, unit = (value[:-1], _SIZE_UNITS[value[-1].lower()]) if value[-1:].lower() in _SIZE_UNITS else (value, 1)
    if not number.isdigit():
        raise ValueError("a number of bytes, 0 or more, with K, M or G for KiB, MiB or GiB")
    return int(number) * unit


_size.coerceDoc = "Bytes, 0 or more; K, M or G for KiB, MiB or GiB (200M)."


def _workers(value: str) -> int:
    if value == "auto":
        # The cores this process may run on, which a container or taskset can narrow.
        return len(os.sched_getaffinity(0))
    if not value.isdigit() or int(value) < 1:
        raise ValueError("a whole number, 1 or more, or auto")
    return int(value)


_workers.coerceDoc = "A whole number, 1 or more, or auto: one per CPU core."


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


def _metrics_client() -> None:
    """Refuse --metrics without the Prometheus client library."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise usage.UsageError("--metrics needs the prometheus_client package: pip install 'cgiserve[metrics]'") from None


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
        ["workers", None, 1, "Worker processes serving the same sockets under a supervising master.", _workers],
        ["max-scripts", None, None, "Scripts running at once (default: 8 per CPU core), shared among the workers.", _count],
        ["max-queue", None, 128, "Requests that may wait for a script slot, shared among the workers; more get 503.", _count],
        ["queue-timeout", None, 30.0, "Seconds a request may wait for a script slot before 503 (0: no limit).", _seconds],
        ["max-body", None, 100 * MiB, "Largest request body in bytes (0: no limit); larger gets 413.", _size],
        ["max-stderr", None, 64 * 1024, "Bytes of a script's stderr logged per request.", _size],
        ["limit-cpu", None, 0, "Seconds of CPU time each process of a script may use (RLIMIT_CPU; 0: no limit).", _whole],
        ["limit-memory", None, 0, "Bytes of address space each process of a script may have (RLIMIT_AS; 0: no limit).", _size],
        ["limit-processes", None, 0, "Processes and threads the scripts' user may have (RLIMIT_NPROC; 0: no limit).", _whole],
        ["limit-file-size", None, 0, "Largest file a script may write, in bytes (RLIMIT_FSIZE; 0: no limit).", _size],
        ["limit-files", None, 0, "Open files each process of a script may have (RLIMIT_NOFILE; 0: no limit).", _whole],
        ["idle-timeout", None, 60.0, "Close a keep-alive connection idle for this many seconds.", _positive_seconds],
        ["header-timeout", None, 20.0, "Close a connection whose request headers take longer than this.", _positive_seconds],
        ["shutdown-grace", None, 10.0, "On shutdown, seconds running scripts get before they are stopped.", _seconds],
        ["access-log", None, None, "Write one line per request to this file ('-': standard output)."],
        ["access-log-format", None, "combined", "Apache's combined, or json with script details.", _log_format],
        ["htpasswd", None, None, "Require HTTP Basic authentication with this htpasswd file (bcrypt entries)."],
        ["auth-realm", None, "cgiserve", "The realm that --htpasswd names in its 401 challenge."],
        ["warm-preload", None, None, "Modules --warm-python helpers import at start, comma-separated (empty: none)."],
        ["metrics", None, None, "Serve Prometheus /metrics and a /status page on this Twisted endpoint, apart from the site."],
    ]
    optFlags = [
        ["no-listing", None, "Answer 403 for a directory without an index file instead of listing it."],
        ["pass-auth", None, "Pass the Authorization header to scripts as HTTP_AUTHORIZATION."],
        ["no-form-argv", None, "Do not pass a url-encoded form POST body to scripts as argv[1]."],
        ["isindex-argv", None, "Pass the words of a query without '=' to scripts as arguments (RFC 3875 4.4)."],
        ["metrics-per-script", None, "Label the script metrics with each script's path: a series per script."],
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
        self["sendfile-dir"] = []

    def parseOptions(self, options=None):
        # Kept for the workers, which parse the same command line afresh.
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_listen(self, endpoint):
        """Listen on this Twisted endpoint (repeatable; default tcp:8000:interface=127.0.0.1)."""
        self["listen"].append(endpoint)

    def opt_auth_path(self, prefix):
        """Require --htpasswd authentication only under this URL path (repeatable; default: everywhere)."""
        self["auth-path"].append(prefix)

    def opt_cgi_dir(self, directory):
        """Run scripts only from this directory under the root, like Apache's ScriptAlias (repeatable)."""
        self["cgi-dir"].append(directory)

    def opt_sendfile_dir(self, directory):
        """Send the files under this directory that scripts name in an X-Sendfile header (repeatable)."""
        path = os.path.realpath(directory)
        if not os.path.isdir(path):
            raise usage.UsageError(f"--sendfile-dir {directory}: not a directory")
        if path not in self["sendfile-dir"]:
            self["sendfile-dir"].append(path)

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
        self.check_listen()
        if self["max-scripts"] is None:
            self["max-scripts"] = default_max_scripts()
        for name in ("max-scripts", "max-queue"):
            if self[name] < self["workers"]:
                raise usage.UsageError(f"--{name} {self[name]}: fewer than --workers {self['workers']}, one each at least")
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
        if self["metrics"] is not None:
            _metrics_client()
        elif self["metrics-per-script"]:
            raise usage.UsageError("--metrics-per-script needs --metrics")
        self.check_limits()

    def check_limits(self) -> None:
        """Find prlimit if any --limit-* is set, and refuse a limit no script could be given."""
        self["prlimit"] = None
        limits = self.limits()
        if not limits:
            return
        self["prlimit"] = find_prlimit()
        if self["prlimit"] is None:
            raise usage.UsageError("--limit-* options need util-linux's prlimit, which is not installed")
        beyond = limits.beyond(lambda which: resource.getrlimit(which)[1])
        if beyond is not None:
            raise usage.UsageError(beyond)

    def limits(self) -> Limits:
        """The per-script resource limits these options set."""
        return Limits(
            cpu_seconds=self["limit-cpu"],
            memory_bytes=self["limit-memory"],
            processes=self["limit-processes"],
            file_size_bytes=self["limit-file-size"],
            files=self["limit-files"],
        )

    def check_listen(self) -> None:
        """Refuse a --listen (or --metrics) description that could never listen, or that workers could not share."""
        for description in self["listen"]:
            check_endpoint(description)
            if self["workers"] > 1 and not shareable(description):
                raise usage.UsageError(f"--listen {description}: --workers serves only {SHAREABLE} endpoints")
        if self["metrics"] is not None:
            check_endpoint(self["metrics"], "--metrics")

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
            max_scripts=self["max-scripts"],
            max_queue=self["max-queue"],
            queue_timeout=self["queue-timeout"],
            max_body=self["max-body"],
            max_stderr=self["max-stderr"],
            idle_timeout=self["idle-timeout"],
            header_timeout=self["header-timeout"],
            shutdown_grace=self["shutdown-grace"],
            cgi_dirs=self["cgi-dir"],
            sendfile_dirs=tuple(self["sendfile-dir"]),
            limits=self.limits(),
        )


def makeService(options: Options) -> service.MultiService:
    """
    One process that serves (C{--workers 1}), or a master whose worker
    processes serve the sockets it opens; the serving tree, and twisted.web,
    are imported only where they serve.
    """
    if options["workers"] > 1:
        from cgiserve.arbiter import master_service

        top = master_service(options)
    else:
        from twisted.internet import reactor

        from cgiserve.serve import serving_service

        endpoints = [server_endpoint(reactor, description) for description in options["listen"]]
        metrics = options["metrics"]
        metrics_endpoint = None if metrics is None else server_endpoint(reactor, metrics, "--metrics")
        top = serving_service(options, endpoints, metrics_endpoint)
    RootWarning().setServiceParent(top)
    return top
