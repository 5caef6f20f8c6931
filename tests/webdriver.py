# -*- test-case-name: tests.test_browser -*-
"""A minimal W3C WebDriver client for chromedriver and headless Chromium, standard library only."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

HOST = "127.0.0.1"

# W3C WebDriver, "Elements": the key under which a web element reference travels.
ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"

START_TIMEOUT_SECONDS = 20
PAGE_LOAD_TIMEOUT_SECONDS = 30
# Every command is answered within the page load timeout (a click that
# navigates waits for the new page); the socket timeout sits above it.
REQUEST_TIMEOUT_SECONDS = PAGE_LOAD_TIMEOUT_SECONDS + 15
# Teardown must not hang on a wedged browser: short timeouts, then signals.
QUIT_TIMEOUT_SECONDS = 10
STOP_TIMEOUT_SECONDS = 10
DEFAULT_WAIT_SECONDS = 10
POLL_INTERVAL_SECONDS = 0.05

# Headless, sandbox-free (tests may run as root in a container) and quiet.
# Even with these flags Chromium 156 still asks for accounts.google.com,
# update.googleapis.com, content-autofill.googleapis.com (on typing into a
# form), clients2.google.com (network time) and the default search engine
# (seen in a --log-net-log): so every host name but 127.0.0.1 resolves to
# nothing, and the only traffic is to the server under test.
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)

# Errors that only mean "not yet" while waiting for a page to change.
_TRANSIENT_ERRORS = frozenset({"no such element", "stale element reference"})


class WebDriverError(RuntimeError):
    """An error answer from the WebDriver server; C{error} is its W3C error code."""

    def __init__(self, error: str, message: str):
        super().__init__(f"{error}: {message}")
        self.error = error
        self.message = message


def free_port(host: str = HOST) -> int:
    """A TCP port of C{host} that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def call(port: int, method: str, path: str, body=None, timeout: float = REQUEST_TIMEOUT_SECONDS):
    """
    Send one WebDriver command to the server on C{port} of 127.0.0.1 and
    return the C{value} of its answer. The connection is closed before
    this returns; an error answer raises L{WebDriverError}.
    """
    payload = None if body is None else json.dumps(body).encode("utf-8")
    headers = {} if payload is None else {"Content-Type": "application/json; charset=utf-8"}
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        try:
            status, data = response.status, response.read()
        finally:
            response.close()
    finally:
        connection.close()
    try:
        value = json.loads(data)["value"]
    except (ValueError, KeyError, TypeError):
        raise WebDriverError("invalid answer", f"{method} {path}: HTTP {status}: {data[:300]!r}") from None
    if status != 200 or (isinstance(value, dict) and "error" in value):
        error = value.get("error", f"HTTP {status}") if isinstance(value, dict) else f"HTTP {status}"
        message = value.get("message", "") if isinstance(value, dict) else repr(value)
        raise WebDriverError(error, f"{method} {path}: {message}")
    return value


def wait_until(condition: Callable[[], T], timeout_seconds: float = DEFAULT_WAIT_SECONDS, what: str = "") -> T:
    """
    Call C{condition} until it returns something true, and return that.
    A missing or stale element counts as "not yet". After
    C{timeout_seconds}, raise C{TimeoutError} naming C{what}.
    """
    deadline = time.monotonic() + timeout_seconds
    last = None
    while True:
        try:
            result = condition()
        except WebDriverError as e:
            if e.error not in _TRANSIENT_ERRORS:
                raise
            result, last = None, e
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last: {last})" if last else ""
            raise TimeoutError(f"not true after {timeout_seconds} s: {what or repr(condition)}{detail}")
        time.sleep(POLL_INTERVAL_SECONDS)


class Element:
    """A web element of a L{Session}'s current page."""

    def __init__(self, session: "Session", element_id: str):
        self.session = session
        self.element_id = element_id

    def _call(self, method: str, command: str, body=None):
        return self.session.call(method, f"/element/{self.element_id}/{command}", body)

    def send_keys(self, text: str) -> None:
        """Type C{text} into this element, as the user would."""
        self._call("POST", "value", {"text": text})

    def click(self) -> None:
        """Click this element (waits for a navigation it starts)."""
        self._call("POST", "click", {})

    @property
    def text(self) -> str:
        """The rendered text of this element."""
        return self._call("GET", "text")

    def __eq__(self, other):
        return isinstance(other, Element) and other.element_id == self.element_id

    def __hash__(self):
        return hash(self.element_id)

    def __repr__(self):
        return f"<Element {self.element_id}>"


class Session:
    """
    One WebDriver session: a Chromium with its own fresh profile directory.
    Use as a context manager; L{quit} ends the browser.
    """

    def __init__(self, driver: "ChromeDriver", session_id: str):
        self.driver = driver
        self.session_id = session_id
        self.closed = False

    def call(self, method: str, command: str = "", body=None, timeout: float = REQUEST_TIMEOUT_SECONDS):
        """Send a command of this session (C{command} is the path after the session id)."""
        return call(self.driver.port, method, f"/session/{self.session_id}{command}", body, timeout)

    def navigate(self, url: str) -> None:
        """Load C{url} and wait for it to finish loading."""
        self.call("POST", "/url", {"url": url})

    @property
    def current_url(self) -> str:
        return self.call("GET", "/url")

    @property
    def page_source(self) -> str:
        """The current page, serialised from its DOM."""
        return self.call("GET", "/source")

    def find(self, selector: str) -> Element:
        """The first element matching the CSS C{selector}, or L{WebDriverError} C{no such element}."""
        found = self.call("POST", "/element", {"using": "css selector", "value": selector})
        return Element(self, found[ELEMENT_KEY])

    def find_all(self, selector: str) -> list[Element]:
        """All elements matching the CSS C{selector}, possibly none."""
        found = self.call("POST", "/elements", {"using": "css selector", "value": selector})
        return [Element(self, each[ELEMENT_KEY]) for each in found]

    def wait_until(self, condition: Callable[[], T], timeout_seconds: float = DEFAULT_WAIT_SECONDS, what: str = "") -> T:
        """L{wait_until}, for conditions on this session's page."""
        return wait_until(condition, timeout_seconds, what)

    def quit(self) -> None:
        """Delete the session, which closes its browser. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.call("DELETE", timeout=QUIT_TIMEOUT_SECONDS)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.quit()


class ChromeDriver:
    """
    A C{chromedriver} process listening on a free port of 127.0.0.1, in
    its own process group, with a fresh temporary directory for its log,
    the browser profiles and the browser's temporary files.

    L{stop} (or leaving the context manager) ends every session, stops
    chromedriver, kills anything left in its process group or using its
    directory, and removes that directory. It is safe to call twice and
    after a failed L{start}.
    """

    def __init__(self, executable: str = "chromedriver", chromium: str = "chromium"):
        self.executable = executable
        self.chromium = chromium
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.directory: Path | None = None
        self.sessions: list[Session] = []

    @property
    def log_path(self) -> Path | None:
        return None if self.directory is None else self.directory / "chromedriver.log"

    def log(self) -> str:
        """What chromedriver has written so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except (AttributeError, FileNotFoundError):
            return ""

    def start(self) -> "ChromeDriver":
        """Start chromedriver and wait (bounded) until its /status says it is ready."""
        self.directory = Path(tempfile.mkdtemp(prefix="cgiserve-chromedriver-"))
        self.port = free_port()
        # Chromium puts its shared memory files (--disable-dev-shm-usage)
        # under TMPDIR, and its crash report database, dconf and NSS files
        # under the home and XDG directories whatever --user-data-dir says:
        # point them all into our directory, so the browser writes nothing
        # elsewhere and every process it starts names that directory.
        home = self.directory / "home"
        home.mkdir()
        env = dict(
            os.environ,
            TMPDIR=str(self.directory),
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
        )
        started = False
        try:
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    [self.executable, f"--port={self.port}"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            self._wait_ready()
            started = True
        finally:
            if not started:
                self.stop()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromedriver exited with {self.process.returncode}:\n{self.log()}")
            try:
                if call(self.port, "GET", "/status", timeout=1).get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            time.sleep(POLL_INTERVAL_SECONDS)
        raise RuntimeError(f"chromedriver not ready in {START_TIMEOUT_SECONDS} s:\n{self.log()}")

    def new_session(self, *extra_args: str) -> Session:
        """Start a headless Chromium with a fresh profile and return its session."""
        profile = tempfile.mkdtemp(prefix="profile-", dir=self.directory)
        capabilities = {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {"implicit": 0, "pageLoad": PAGE_LOAD_TIMEOUT_SECONDS * 1000, "script": 10_000},
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}", *extra_args],
            },
        }
        answer = call(self.port, "POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        session = Session(self, answer["sessionId"])
        self.sessions.append(session)
        return session

    def stop(self) -> None:
        """End all sessions, stop chromedriver and its browsers, remove the directory."""
        try:
            self._quit_sessions()
            self._stop_process()
        finally:
            self._kill_leftovers()
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None

    def _quit_sessions(self) -> None:
        alive = self.process is not None and self.process.poll() is None
        for session in self.sessions:
            if alive and not session.closed:
                try:
                    session.quit()
                except (OSError, WebDriverError):
                    # The browser may be gone already; the signals below remain.
                    pass
            session.closed = True

    def _stop_process(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def _kill_leftovers(self) -> None:
        """
        SIGKILL whatever survived: chromedriver's process group (the browser
        it launched inherits it) and any process whose command line names
        our directory (the profile), should a browser have left the group.
        """
        if self.process is None:
            return
        pids = set(_pids_mentioning(str(self.directory))) if self.directory else set()
        try:
            # The group id is chromedriver's pid (start_new_session).
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # ESRCH: the whole group is gone already.
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.process.poll() is None:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        # Killed processes vanish (or become zombies with an empty command
        # line) shortly after; wait a bounded time so the directory can go.
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while self.directory and _pids_mentioning(str(self.directory)) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_SECONDS)

    def __enter__(self) -> "ChromeDriver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _pids_mentioning(text: str) -> list[int]:
    """The ids of live processes (Linux /proc) whose command line contains C{text}."""
    needle = text.encode()
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids
