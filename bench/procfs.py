"""Read process facts from /proc: RSS, PSS, spooled temp files, workers, CGI children."""

import os
import stat
import threading
import time

MiB = 1024 * 1024
# In the command line of a cgiserve master's worker processes.
WORKER = "cgiserve.worker"


def rss(pid):
    """Resident set size of one process (not its children), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid):
    """CPU time (user and system) of one process itself, not its children, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_times():
    """(busy, total) CPU time of the whole machine so far, in clock ticks."""
    with open("/proc/stat") as f:
        ticks = [int(n) for n in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def spooled(pid):
    """Total size of deleted regular files the process holds open, in bytes.

    Temporary files (``tempfile.TemporaryFile``, O_TMPFILE) show up in
    /proc/PID/fd as links ending in ``(deleted)``.
    """
    total = 0
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return 0
    for fd in fds:
        path = os.path.join(fd_dir, fd)
        try:
            target = os.readlink(path)
            if not target.endswith("(deleted)") or target.startswith("/memfd:"):
                continue
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def _parents():
    """{pid: parent pid} of every live process."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name may hold spaces: fields start after ")".
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent_of[int(entry)] = int(fields[1])
    return parent_of


def children(pid):
    """PIDs of the live children of a process (not their children)."""
    return [p for p, pp in _parents().items() if pp == pid]


def descendants(pid):
    """PIDs of all live descendants of a process."""
    parent_of = _parents()
    found, frontier = [], {pid}
    while frontier:
        below = {p for p, pp in parent_of.items() if pp in frontier}
        found.extend(below)
        frontier = below
    return found


def workers(pid):
    """PIDs of a cgiserve master's workers, its children running cgiserve.worker, in order."""
    return sorted(p for p in children(pid) if WORKER in cmdline(p))


def cwd(pid):
    """A process's working directory, or None once it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def cmdline(pid):
    """A process's arguments joined by spaces; "" once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def memory(pid):
    """RSS, PSS and private memory of one process in bytes, from /proc/PID/smaps_rollup.

    PSS divides each shared page among the processes that map it, so the
    PSS of several processes adds up to the memory they take together;
    private pages are mapped by this process alone (for a forked child,
    those it has written since the fork, copied). Returns a dict with
    keys rss, pss and private; raises OSError once the process is gone.
    """
    kib = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                kib[name] = int(rest.split()[0])
    return {"rss": kib.get("Rss", 0) * 1024, "pss": kib.get("Pss", 0) * 1024,
            "private": (kib.get("Private_Clean", 0)
                        + kib.get("Private_Dirty", 0)) * 1024}


def written(pids):
    """Sum of ``wchar`` (bytes written) over processes, skipping gone ones."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io") as f:
                for line in f:
                    if line.startswith("wchar:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


class Sampler:
    """Sample the RSS and spooled bytes of processes, summed, every 20 ms in a thread.

    Use as a context manager; afterwards ``peak_rss`` and ``peak_spooled``
    hold the maxima seen. Sampling stops by itself after ``limit`` seconds.
    """

    interval = 0.02

    def __init__(self, pids, limit=600):
        self.pids = pids
        self.limit = limit
        self.peak_rss = self.peak_spooled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        try:
            self.peak_rss = max(self.peak_rss, sum(rss(pid) for pid in self.pids))
        except OSError:
            return
        self.peak_spooled = max(self.peak_spooled, sum(spooled(pid) for pid in self.pids))

    def _run(self):
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
