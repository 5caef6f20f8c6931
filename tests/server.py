"""A real cgiserve daemon for end-to-end tests: twistd in a child process on a loopback port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent

_STARTED = re.compile(r"Site starting on (\d+)")
_START_SECONDS = 20


class Server:
    """
    C{twistd -n cgiserve} run from the checkout, listening on a free port of
    127.0.0.1, its log collected in C{log_path}. Use as a context manager.
    """

    def __init__(self, root, *options: str, cwd=None, listen: str = "tcp:0:interface=127.0.0.1", env=None):
        self.root = Path(root)
        self.options = options
        self.cwd = Path(cwd) if cwd else self.root
        self.listen = listen
        self.env = env
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        # A fresh file each time: a reused name could show an old server's port.
        fd, name = tempfile.mkstemp(prefix="cgiserve-", suffix=".log", dir=self.root.parent)
        os.close(fd)
        self.log_path = Path(name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile",
            str(self.log_path),
            "cgiserve",
            "--root",
            str(self.root),
            "--listen",
            self.listen,
            *self.options,
        ]

    def start(self) -> "Server":
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
                raise RuntimeError(f"cgiserve exited with {self.process.returncode}: {out}\n{self.log()}")
            match = _STARTED.search(self.log())
            if match:
                self.port = int(match.group(1))
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cgiserve did not start in {_START_SECONDS} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)
        finally:
            self.process.stdout.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.process is not None and self.process.stdout and not self.process.stdout.closed:
            self.process.stdout.close()
