"""A real cgiserve daemon for end-to-end tests: twistd in a child process on a loopback port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import procfs

CHECKOUT = Path(__file__).resolve().parent.parent

# How twistd's ports announce themselves: "Site starting on 8080",
# "Site (TLS) starting on 8443", "Site starting on '/run/x.sock'".
_STARTED = re.compile(r"Site(?: \((?:TLS|PROXY)\))? starting on (\d+|'[^']+')")
_START_SECONDS = 20
# What the master of --workers logs as each worker starts serving.
SERVING = re.compile(r"Worker (\d+) \(pid (\d+)\) serving")

# How long past its deadline the server may take to act on it: the reactor
# runs on a loaded two-core machine, and /proc is polled.
MARGIN_SECONDS = 2.0


class Server:
    """
    C{twistd -n cgiserve} run from the checkout, listening on a free port of
    127.0.0.1, its log collected in C{log_path}. Use as a context manager.
    """

    def __init__(
        self,
        root,
        *options: str,
        cwd=None,
        listen: str = "tcp:0:interface=127.0.0.1",
        env=None,
        twistd_options=(),
        launcher=(),
        log_path=None,
    ):
        self.root = Path(root)
        self.options = options
        self.cwd = Path(cwd) if cwd else self.root
        self.listen = listen
        self.env = env
        self.twistd_options = list(twistd_options)
        self.launcher = list(launcher)
        self.port: int | None = None
        # What each listening port announced: a number or a socket path.
        self.ports: list[str] = []
        self.process: subprocess.Popen | None = None
        # How many "serving" lines of workers to wait for: --workers N, if given.
        self.workers = int(options[options.index("--workers") + 1]) if "--workers" in options else 0
        if log_path is None:
            # A fresh file each time: a reused name could show an old server's port.
            fd, log_path = tempfile.mkstemp(prefix="cgiserve-", suffix=".log", dir=self.root.parent)
            os.close(fd)
        self.log_path = Path(log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """twistd (behind the launcher, if any) with its own options, then cgiserve's."""
        return [
            *self.launcher,
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile",
            str(self.log_path),
            *self.twistd_options,
            "cgiserve",
            "--root",
            str(self.root),
            "--listen",
            self.listen,
            *self.options,
        ]

    def start(self, listeners: int = 1) -> "Server":
        """Start twistd and wait until its C{listeners} ports accept connections, and its workers (if any) serve."""
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + _START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                out = self.process.stdout.read().decode(errors="replace")
                self.process.stdout.close()
                raise RuntimeError(f"cgiserve exited with {self.process.returncode}: {out}\n{self.log()}")
            self.ports = [found.strip("'") for found in _STARTED.findall(self.log())]
            serving = len(SERVING.findall(self.log())) >= self.workers
            if serving and len(self.ports) >= listeners and all(map(_accepting, self.ports)):
                if self.ports[0].isdigit():
                    self.port = int(self.ports[0])
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cgiserve did not start in {_START_SECONDS} s:\n{self.log()}")

    def worker_pids(self) -> set[int]:
        """The pids of the master's workers now: its children that run cgiserve.worker."""
        return procfs.children_running(self.process.pid, b"cgiserve.worker")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, within: float = 30) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited C{within} seconds: its exit status, or None if killed."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            return None
        finally:
            self.process.stdout.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.process is not None and self.process.stdout and not self.process.stdout.closed:
            self.process.stdout.close()


def assert_log_clean(server) -> None:
    """No traceback or unhandled error anywhere in the server's log."""
    log = server.log()
    for marker in ("Traceback", "Unhandled", "CRITICAL", "#critical"):
        assert marker not in log, f"{marker!r} in the server log:\n{log[-4000:]}"


def wait_log(server, pattern: str, timeout: float = 5) -> str:
    """Wait for a line matching C{pattern} in the server's log; the log."""
    regex = re.compile(pattern)
    found = procfs.wait_until(lambda: regex.search(server.log()), timeout)
    log = server.log()
    assert found, f"no log line matching {pattern!r}:\n{log[-4000:]}"
    return log


def exited(server, timeout: float = 10) -> int | None:
    """The exit status of a server that is shutting down by itself, None if it is still running after C{timeout}."""
    try:
        return server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        server.process.stdout.close()


def assert_clean_exit(code: int | None, server) -> None:
    """
    The server shut down completely after our SIGTERM. twistd (since
    Twisted 21.2) ends a run stopped by a signal by re-raising that signal,
    so the exit status of a clean SIGTERM shutdown is -SIGTERM, not 0.
    """
    assert code is not None, "the server did not exit in time after SIGTERM"
    assert code in (0, -signal.SIGTERM), code
    assert "Server Shut Down." in server.log()


def _accepting(port: str) -> bool:
    """Whether a port is ready: a unix socket is announced before it is bound, a TCP port after."""
    if port.isdigit():
        return True
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(port)
        except OSError:
            return False
    return True
