"""Start and stop the servers under test, each on its own loopback port."""

import os
import signal
import socket
import subprocess
import sys
import time

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
server.stream-request-body = 2
server.stream-response-body = 2
cgi.assign = (".cgi" => "")
mimetype.assign = (".txt" => "text/plain")
"""


def _twisted(*args):
    # "python -m twisted" is "twist", not "twistd": call twistd's entry point.
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", *args]


def _cgiserve(root, port, workdir):
    path = os.pathsep.join(filter(None, [CHECKOUT, os.environ.get("PYTHONPATH")]))
    # Bytecode compiled beforehand, as pip does at install (and as twistd
    # web's is): otherwise every start compiles the checkout's modules, and
    # the compiler's freed memory counts in the idle RSS.
    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    os.path.join(CHECKOUT, "cgiserve"),
                    os.path.join(CHECKOUT, "twisted", "plugins")], check=True)
    # --max-body=0: the default 100 MiB limit would refuse the 200 MiB upload.
    argv = _twisted("cgiserve", "--root", root, "--max-body=0",
                    "--listen", f"tcp:{port}:interface={HOST}")
    return argv, {"PYTHONPATH": path}


def _twistd_web(root, port, workdir):
    # twistd web --path maps *.cgi to twisted.web.twcgi.CGIScript.
    return _twisted("web", "--path", root,
                    "--listen", f"tcp:{port}:interface={HOST}"), {}


def _lighttpd(root, port, workdir):
    conf = os.path.join(workdir, "lighttpd.conf")
    with open(conf, "w") as f:
        f.write(LIGHTTPD_CONF.format(root=root, host=HOST, port=port,
                                     workdir=workdir))
    return ["lighttpd", "-D", "-f", conf], {}


def _http_server(root, port, workdir):
    # Runs CGI only under /cgi-bin/, hence the shared docroot layout.
    return [sys.executable, "-m", "http.server", "--cgi",
            "--bind", HOST, str(port)], {}


COMMANDS = {
    "cgiserve": _cgiserve,
    "twistd-web": _twistd_web,
    "lighttpd": _lighttpd,
    "http.server": _http_server,
}


def free_port():
    """A currently unused TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class StartError(Exception):
    """The server exited or did not accept connections in time."""


class Server:
    """One server process in its own process group, logging to a file."""

    def __init__(self, name, root, workdir):
        self.name = name
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{name}.log")
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
        """Return once the port accepts connections, else raise StartError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise StartError(f"not listening after {timeout} s: {self.log_tail()}")

    def log_tail(self, lines=5):
        with open(self.log_path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])

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
