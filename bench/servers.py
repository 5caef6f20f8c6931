"""Start and stop the servers under test, each on its own loopback port."""

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import docroot
import procfs

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"

LIGHTTPD_CONF = """\
server.document-root = "{root}"
server.bind = "{host}"
server.port = {port}
server.modules = ("mod_cgi")
server.errorlog = "{workdir}/lighttpd-error.log"
server.upload-dirs = ("{workdir}")
{request_body}server.stream-response-body = 2
cgi.assign = (".cgi" => "")
mimetype.assign = (".txt" => "text/plain")
"""


def _twisted(*args):
    # "python -m twisted" is "twist", not "twistd": call twistd's entry point.
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", *args]


# The cgiserve variants and their --workers (1, the default: one process
# serves; more: a master and that many worker processes), those of them
# run with --warm-python, and with --metrics (what counting costs, against
# plain cgiserve; not in the default set).
WORKERS = {"cgiserve": 1, "cgiserve-w2": 2, "cgiserve-warm": 1, "cgiserve-warm-w2": 2, "cgiserve-metrics": 1}
WARM = {"cgiserve-warm", "cgiserve-warm-w2"}
METRICS = {"cgiserve-metrics"}


def access_log_path(workdir, name):
    """Where a server that logs requests (a warm cgiserve) writes them, one JSON object a line."""
    return os.path.join(workdir, f"{name}-access.json")


def _cgiserve(name, root, port, workdir):
    path = os.pathsep.join(filter(None, [CHECKOUT, os.environ.get("PYTHONPATH")]))
    # Bytecode compiled beforehand, as pip does at install (and as twistd
    # web's is): otherwise every start compiles the checkout's modules, and
    # the compiler's freed memory counts in the idle RSS.
    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    os.path.join(CHECKOUT, "cgiserve"),
                    os.path.join(CHECKOUT, "twisted", "plugins")], check=True)
    # --max-body=0: the default 100 MiB limit would refuse the 200 MiB upload.
    argv = _twisted("cgiserve", "--root", root, "--max-body=0",
                    "--listen", f"tcp:{port}:interface={HOST}",
                    "--workers", str(WORKERS[name]))
    if name in WARM:
        # The access log (one file, all workers write to it) says of each
        # request whether it started warm: the bench checks that before
        # measuring, and counts the exec'd ones.
        argv += ["--warm-python", docroot.PYTHON,
                 "--access-log", access_log_path(workdir, name),
                 "--access-log-format", "json"]
    if name in METRICS:
        argv += ["--metrics", f"tcp:{free_port()}:interface={HOST}"]
    return argv, {"PYTHONPATH": path}


def _twistd_web(root, port, workdir):
    # twistd web --path maps *.cgi to twisted.web.twcgi.CGIScript.
    return _twisted("web", "--path", root,
                    "--listen", f"tcp:{port}:interface={HOST}"), {}


def _lighttpd(name, root, port, workdir):
    # lighttpd streams request bodies to the script; lighttpd-spool, as
    # lighttpd does by default, writes them to a file first, then runs it.
    conf = os.path.join(workdir, f"{name}.conf")
    request_body = "" if name == "lighttpd-spool" else "server.stream-request-body = 2\n"
    with open(conf, "w") as f:
        f.write(LIGHTTPD_CONF.format(root=root, host=HOST, port=port,
                                     workdir=workdir, request_body=request_body))
    return ["lighttpd", "-D", "-f", conf], {}


def _http_server(root, port, workdir):
    # Runs CGI only under /cgi-bin/, hence the shared docroot layout.
    return [sys.executable, "-m", "http.server", "--cgi",
            "--bind", HOST, str(port)], {}


COMMANDS = {
    **{name: functools.partial(_cgiserve, name) for name in WORKERS},
    "twistd-web": _twistd_web,
    "lighttpd": functools.partial(_lighttpd, "lighttpd"),
    "lighttpd-spool": functools.partial(_lighttpd, "lighttpd-spool"),
    "http.server": _http_server,
}


def free_port():
    """A currently unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# How a master's log tells that a worker serves; how a warm server's log
# tells that a warm helper is serving (or is not going to).
WORKER_SERVING = re.compile(r"Worker \d+ \(pid \d+\) serving")
WARM_READY = re.compile(r"self-test passed")
WARM_FAILED = re.compile(r"self-test failed.*|cannot start a helper.*")
WARM_HELPER = "warm_helper.py"
WARM_STARTING = re.compile(r"helper \d+ starting")


class StartError(Exception):
    """The server exited or did not accept connections in time."""


class Server:
    """One server process in its own process group, logging to a file."""

    def __init__(self, name, root, workdir):
        self.name = name
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.workers = WORKERS.get(name)
        self.warm = name in WARM
        self.access_log = access_log_path(workdir, name) if self.warm else None
        argv, env = COMMANDS[name](root, self.port, workdir)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv, cwd=root, env={**os.environ, **env},
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            start_new_session=True,
        )

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self, timeout=20):
        """Return once the server serves, else raise StartError.

        Its port must accept connections. A master (--workers 2 or more)
        must also have logged each worker's "Worker N (pid P) serving": its
        port accepts from the start, before any worker does. A warm server
        must have each worker's (or its own) helper ready: "self-test
        passed" in the log as many times, and no "self-test failed".
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise StartError(f"not listening after {timeout} s: {self.log_tail()}")
        if self.workers and self.workers > 1:
            self._wait_log(WORKER_SERVING, self.workers, deadline)
        if self.warm:
            self._wait_log(WARM_READY, self.workers, deadline, WARM_FAILED)

    def _wait_log(self, pattern, count, deadline, failed=None):
        """Wait until ``count`` lines of the log match ``pattern``, else raise StartError.

        Raises at once if the server exits or a line matches ``failed``.
        """
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"exited with {self.proc.returncode}: {self.log_tail()}")
            text = self.log_text()
            if len(pattern.findall(text)) >= count:
                return
            found = failed.search(text) if failed else None
            if found:
                raise StartError(f"warm Python not ready: {found.group(0)}")
            time.sleep(0.1)
        raise StartError(f"fewer than {count} {pattern.pattern!r} in its log: {self.log_tail()}")

    def log_text(self, offset=0):
        """The server's log from byte ``offset`` on."""
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def log_size(self):
        return os.path.getsize(self.log_path)

    def log_tail(self, lines=5):
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def access_log_size(self):
        """The access log's size in bytes (0 for a server without one)."""
        try:
            return os.path.getsize(self.access_log) if self.access_log else 0
        except FileNotFoundError:
            return 0

    def access_records(self, offset=0):
        """The access log's records from byte ``offset`` on, as dicts (complete lines only)."""
        if not self.access_log:
            return []
        try:
            with open(self.access_log, "rb") as f:
                f.seek(offset)
                lines = f.read().split(b"\n")[:-1]
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines]

    def helpers_started(self, offset=0):
        """How many warm helpers the log says were started from byte ``offset`` on."""
        return len(WARM_STARTING.findall(self.log_text(offset)))

    def processes(self):
        """PIDs of the server's own processes: twistd and, if it is a master, its workers."""
        return [self.pid] + procfs.workers(self.pid)

    def rss(self):
        """The RSS of the server's own processes, summed, in bytes."""
        return sum(procfs.rss(pid) for pid in self.processes())

    def warm_helpers(self):
        """PIDs of the server's warm Python helpers: one per worker (more while one is replaced)."""
        if not self.warm:
            return []
        return [pid for each in self.processes() for pid in procfs.children(each)
                if WARM_HELPER in procfs.cmdline(pid)]

    def scripts(self):
        """PIDs of the scripts running now, and the set of those a warm helper forked.

        The scripts are the server's descendants less its workers, its warm
        helpers and their spare children (forked ahead of a request, still
        in the helper's working directory, /, not yet a script's).
        """
        own = self.processes()
        helpers = self.warm_helpers()
        spares = {pid for helper in helpers for pid in procfs.children(helper) if procfs.cwd(pid) == "/"}
        warm = {pid for helper in helpers for pid in procfs.children(helper)} - spares
        return [p for p in procfs.descendants(self.pid)
                if p not in own and p not in helpers and p not in spares], warm

    def stop(self):
        """SIGTERM the process group, SIGKILL it if still there after 5 s.

        Scripts that a server started in sessions of their own are killed
        afterwards, by the PIDs seen just before stopping.
        """
        scripts = procfs.descendants(self.pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
                self.proc.wait(5)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        for pid in scripts + [-self.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(5)
        self._log.close()
