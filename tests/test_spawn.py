"""Tests for cgiserve.spawn: a script starts in its own session and directory, with only stdio, signals at default."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from cgiserve import spawn

pytestmark = pytest.mark.skipif(spawn._libc is None, reason="needs glibc's posix_spawn extensions")

# The child reports what it was started with.
REPORT = """
import json, os, sys
leaked = int(sys.argv[1])
try:
    os.fstat(leaked)
    inherited = True
except OSError:
    inherited = False
print(json.dumps({
    "pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0), "cwd": os.getcwd(),
    "inherited": inherited, "stdin": sys.stdin.read(), "env": dict(os.environ),
}))
"""


# PYTHONCOERCECLOCALE=0: the child Python must not add LC_CTYPE itself.
ENV = (b"ONLY=this", b"PYTHONCOERCECLOCALE=0")


def run(cwd: str, stdin: bytes = b"", env=ENV) -> dict:
    """posix_spawn the reporting child on fresh pipes, with an inheritable descriptor it must not get."""
    leaked_r, leaked_w = os.pipe()
    os.set_inheritable(leaked_w, True)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        pid = spawn.posix_spawn(
            os.fsencode(sys.executable),
            [os.fsencode(sys.executable), b"-c", REPORT.encode(), str(leaked_w).encode()],
            list(env),
            {0: in_r, 1: out_w, 2: out_w},
            os.fsencode(cwd),
        )
        os.close(in_r)
        os.close(out_w)
        os.write(in_w, stdin)
        os.close(in_w)
        with os.fdopen(out_r, "rb") as out:
            report = json.loads(out.read())
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return report
    finally:
        os.close(leaked_r)
        os.close(leaked_w)


def test_child_leads_its_own_session_and_group():
    """The script is the leader of a new session and process group, so its whole group can be signalled."""
    report = run(tempfile.gettempdir())
    assert report["pgid"] == report["pid"]
    assert report["sid"] == report["pid"]
    assert report["pgid"] != os.getpgid(0)


def test_child_runs_in_the_given_directory():
    """The script starts in the directory it was given, not the server's."""
    directory = os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-spawn-"))
    try:
        assert run(directory)["cwd"] == directory
    finally:
        os.rmdir(directory)


def test_child_gets_only_stdio_and_its_environment():
    """Nothing but stdin, stdout and stderr is inherited, and the environment is exactly the one given."""
    report = run(tempfile.gettempdir(), stdin=b"body bytes")
    assert report["inherited"] is False
    assert report["stdin"] == "body bytes"
    assert report["env"] == {"ONLY": "this", "PYTHONCOERCECLOCALE": "0"}


def test_child_starts_with_default_signals():
    """No standard signal is ignored (Python ignores SIGPIPE and SIGXFSZ) or blocked in the script."""
    read_end, write_end = os.pipe()
    # grep reads its own status: a shell would show the mask it blocks
    # while it waits for a child of its own.
    grep = os.fsencode(shutil.which("grep"))
    try:
        argv = [grep, b"-E", b"^Sig(Ign|Blk):", b"/proc/self/status"]
        pid = spawn.posix_spawn(grep, argv, [], {0: read_end, 1: write_end, 2: write_end}, b"/")
        os.close(write_end)
        write_end = None
        with os.fdopen(read_end, "rb") as out:
            masks = dict(line.split(b":") for line in out.read().splitlines())
        read_end = None
        os.waitpid(pid, 0)
    finally:
        for fd in (read_end, write_end):
            if fd is not None:
                os.close(fd)
    standard = (1 << 31) - 1  # signals 1 to 31; glibc keeps 32 and 33 for itself
    assert int(masks[b"SigIgn"], 16) & standard == 0
    assert int(masks[b"SigBlk"], 16) == 0


@pytest.fixture
def not_executable():
    """A regular file without any execute bit."""
    fd, path = tempfile.mkstemp(prefix="cgiserve-spawn-")
    os.close(fd)
    os.chmod(path, 0o644)
    yield os.fsencode(path)
    os.unlink(path)


@pytest.mark.parametrize(
    "executable, cwd, code",
    [
        (b"/nonexistent/script", b"/", errno.ENOENT),
        (None, b"/", errno.EACCES),
        (os.fsencode(sys.executable), b"/nonexistent/dir", errno.ENOENT),
    ],
    ids=["missing", "not executable", "missing directory"],
)
def test_failure_to_execute_is_an_oserror(executable, cwd, code, not_executable):
    """A script that cannot be executed, or a directory that does not exist, raises OSError at once."""
    executable = executable or not_executable
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(OSError) as raised:
            spawn.posix_spawn(executable, [executable], [], {0: read_end, 1: write_end, 2: write_end}, cwd)
        assert raised.value.errno == code
    finally:
        os.close(read_end)
        os.close(write_end)


FALLBACK = """
import json, os, sys
from twisted.internet import protocol, reactor
from cgiserve import spawn

spawn._libc = None  # as on a system without glibc's posix_spawn extensions


class Report(protocol.ProcessProtocol):
    out = b""

    def outReceived(self, data):
        self.out += data

    def processEnded(self, reason):
        pid, pgid, sid = self.out.split()[:3]
        print(json.dumps({"leads": pid == pgid == sid, "cwd": self.out.split()[3].decode()}))
        reactor.stop()


def start():
    argv = [b"/bin/sh", b"-c", b"echo $$ $(ps -o pgid= -p $$) $(ps -o sid= -p $$) $(pwd)"]
    spawn.spawn_script(reactor, Report(), "/bin/sh", argv, {"PATH": "/usr/bin:/bin"}, sys.argv[1], stdin=False)


reactor.callWhenRunning(start)
reactor.run()
"""


@pytest.mark.skipif(not os.path.exists("/bin/ps"), reason="needs ps")
def test_fork_fallback_also_gives_session_and_directory():
    """Without glibc's extensions, the fork fallback still starts the script as a session leader in its directory."""
    directory = os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-spawn-"))
    try:
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        result = subprocess.run(
            [sys.executable, "-c", FALLBACK, directory],
            capture_output=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": checkout},
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"leads": True, "cwd": directory}
    finally:
        os.rmdir(directory)


def test_file_actions_are_made_once_per_descriptors_and_directory():
    """Scripts started on the same descriptor numbers in the same directory share prepared file actions."""
    fds = ((0, 10), (1, 11), (2, 12))
    assert spawn._file_actions(fds, b"/tmp") is spawn._file_actions(fds, b"/tmp")
    assert spawn._file_actions(fds, b"/") is not spawn._file_actions(fds, b"/tmp")
    assert spawn._file_actions(((0, 10), (1, 12), (2, 11)), b"/tmp") is not spawn._file_actions(fds, b"/tmp")


def test_children_on_reused_descriptors_each_get_their_own_directory(tmp_path):
    """Prepared file actions started again on the same pipes still put each child where it was asked."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    assert [run(str(cwd))["cwd"] for cwd in (first, second, first)] == [str(first), str(second), str(first)]


# Run in a Python of its own, with a real reactor and Twisted's SIGCHLD
# handling: each script has exited (is a zombie) before it is registered
# for reaping, the case registration no longer checks for itself, while a
# longer one is still running. Every one must still be reaped and ended.
REAPED_AFTER_EXIT = r"""
import os, sys, time
from twisted.internet import reactor, protocol
from cgiserve import spawn

def zombie(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"

watch = spawn.ScriptProcess.watch_exit
def watch_once_exited(self):
    deadline = time.monotonic() + 5
    while not zombie(self.pid):
        assert time.monotonic() < deadline, "the script did not exit"
        time.sleep(0.001)
    watch(self)
spawn.ScriptProcess.watch_exit = watch_once_exited

ended = []
class Ended(protocol.ProcessProtocol):
    def __init__(self, name):
        self.name = name
    def processEnded(self, reason):
        ended.append((self.name, reason.value.exitCode))
        if len(ended) == 4:
            reactor.stop()

def start():
    spawn.ScriptProcess.watch_exit = watch
    spawn.spawn_script(reactor, Ended("slow"), "/bin/sh", [b"sh", b"-c", b"sleep 0.3; exit 3"], {}, "/", stdin=False)
    spawn.ScriptProcess.watch_exit = watch_once_exited
    for n in range(3):
        spawn.spawn_script(reactor, Ended(f"quick{n}"), "/bin/sh", [b"sh", b"-c", b"exit %d" % n], {}, "/", stdin=False)

reactor.callWhenRunning(start)
reactor.callLater(10, reactor.stop)
reactor.run()
print(sorted(ended))
"""


def test_script_gone_before_it_is_registered_is_still_reaped():
    done = subprocess.run(
        [sys.executable, "-c", REAPED_AFTER_EXIT], capture_output=True, text=True, timeout=30,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[('quick0', 0), ('quick1', 1), ('quick2', 2), ('slow', 3)]"
