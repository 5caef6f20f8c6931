"""Process facts from Linux /proc for end-to-end tests: children, descriptors, liveness, bytes written."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/PID/stat the tests use."""

    pid: int
    state: str
    ppid: int
    pgid: int
    starttime: int


def stat(pid: int) -> Stat | None:
    """The process's stat line, or None once it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name sits in parentheses and may hold spaces or ")":
    # the fields proper start after the last ")".
    fields = line.rpartition(b")")[2].split()
    return Stat(pid, fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19]))


def all_stats() -> list[Stat]:
    """A stat of every process on the system (those that vanish while listing are left out)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = stat(int(entry))
            if info is not None:
                found.append(info)
    return found


def children(pid: int) -> list[Stat]:
    """Processes whose parent is C{pid}, zombies included."""
    return [info for info in all_stats() if info.ppid == pid]


def children_running(pid: int, part: bytes) -> set[int]:
    """The pids of C{pid}'s living children whose command line holds C{part}."""
    return {child.pid for child in children(pid) if child.state not in "ZX" and part in cmdline(child.pid)}


def cmdline(pid: int) -> bytes:
    """The process's command line, its arguments NUL-separated; empty once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def in_groups(pgids) -> list[Stat]:
    """Processes, not zombies, in any of these process groups."""
    pgids = set(pgids)
    return [info for info in all_stats() if info.pgid in pgids and info.state not in "ZX"]


@dataclass(frozen=True)
class Tracked:
    """A process seen once, recognised later by its start time so that a reused pid is not mistaken for it."""

    pid: int
    starttime: int

    @classmethod
    def of(cls, pid: int) -> "Tracked | None":
        info = stat(pid)
        return None if info is None else cls(pid, info.starttime)

    def running(self) -> bool:
        """Whether it still runs: neither reaped nor a zombie (an orphan's zombie may wait for its reaper)."""
        info = stat(self.pid)
        return info is not None and info.starttime == self.starttime and info.state not in "ZX"


def fd_count(pid: int) -> int:
    """How many descriptors the process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def wchar(pid: int) -> int:
    """Bytes the process has passed to write(2) and friends so far."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise ValueError(f"no wchar in /proc/{pid}/io")


def wait_until(predicate, timeout: float, interval: float = 0.02):
    """Poll C{predicate} until it returns something true or C{timeout} seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def read_pid(path, timeout: float = 10) -> Tracked:
    """Wait for a script to write its pid (a line) to C{path}; that process, tracked."""

    def ready():
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return text if text.endswith("\n") else None

    text = wait_until(ready, timeout)
    assert text, f"no pid written to {path} within {timeout} s"
    tracked = Tracked.of(int(text))
    assert tracked is not None, f"process {text.strip()} from {path} already gone"
    return tracked


def unchanged(measure, seconds: float = 0.3):
    """C{measure()} if it gives the same value again C{seconds} later, else None."""
    before = measure()
    time.sleep(seconds)
    return before if measure() == before else None


def gone(*processes: Tracked, timeout: float) -> list[Tracked]:
    """Wait up to C{timeout} seconds for the processes to stop running; those still running."""
    wait_until(lambda: not any(p.running() for p in processes), timeout)
    return [p for p in processes if p.running()]


class Pids:
    """Pid files written by the scripts of one test; every process read from them is SIGKILLed afterwards if still running."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.seen: list[Tracked] = []

    def read(self, name: str, timeout: float = 10) -> Tracked:
        tracked = read_pid(self.dir / name, timeout)
        self.seen.append(tracked)
        return tracked

    def text(self, name: str, timeout: float = 10) -> str:
        path = self.dir / name
        ready = wait_until(lambda: path.exists() and path.read_text().endswith("\n"), timeout)
        assert ready, f"{path} not written within {timeout} s"
        return path.read_text().strip()

    def cleanup(self) -> None:
        """SIGKILL what still runs (a whole group for a script, which leads its own), whatever the test's outcome."""
        for tracked in self.seen:
            info = stat(tracked.pid)
            if not tracked.running() or info is None:
                continue
            try:
                if info.pgid == tracked.pid:
                    os.killpg(tracked.pid, signal.SIGKILL)
                else:
                    os.kill(tracked.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """
    The send and receive queues, in bytes, of the IPv4 TCP connection from
    C{local_port} to C{remote_port} on this host (from /proc/net/tcp), or
    None if there is none. A receive queue that stays full means its owner
    has stopped reading.
    """
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote = int(fields[1].rpartition(":")[2], 16), int(fields[2].rpartition(":")[2], 16)
            if (local, remote) == (local_port, remote_port):
                send, _, receive = fields[4].partition(":")
                return int(send, 16), int(receive, 16)
    return None
