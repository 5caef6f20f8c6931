"""Tests for cgiserve.warm: which requests may start warm, and what the spawner does either way."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from cgiserve.limits import Limits
from cgiserve.warm import HandoverFailed, WarmSpawner, _difference, startup_variables

PYTHON = "/usr/bin/python3"
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "QUERY_STRING": "", "HOME": "/var/www"}


class FakePool:
    """A WarmPython as the spawner sees it: its start-up variables, and the handovers asked of it."""

    def __init__(self, startup=None, answer=None, limits=Limits()) -> None:
        self.startup = startup_variables(ENV) if startup is None else startup
        self.answer = answer
        self.limits = limits
        self.handovers: list = []

    def hand_over(self, protocol, cwd, script, argv0, args, env, stdin):
        self.handovers.append((cwd, script, argv0, list(args)))
        return self.answer


class FakeProtocol:
    warm = False
    exec_reason = None
    limits = None

    def __init__(self, script: str) -> None:
        self.script = script


@pytest.fixture
def scripts():
    top = Path(tempfile.mkdtemp(prefix="cgiserve-warm-"))

    def write(name: str, text: str, mode: int = 0o755) -> str:
        path = top / name
        path.write_text(text)
        path.chmod(mode)
        return str(path)

    yield write
    for path in top.iterdir():
        path.unlink()
    top.rmdir()


@pytest.mark.parametrize(
    ("env", "startup"),
    [
        ({"PATH": "/bin", "QUERY_STRING": "x"}, {}),
        (
            {"PYTHONPATH": "/x", "PYTHONHASHSEED": "0", "LC_ALL": "C", "LANG": "C.UTF-8", "HOME": "/h", "LANGUAGE": "de"},
            {"PYTHONPATH": "/x", "PYTHONHASHSEED": "0", "LC_ALL": "C", "LANG": "C.UTF-8", "HOME": "/h"},
        ),
        ({"HTTP_PYTHONPATH": "/x", "XLANG": "y", "HOMEDIR": "/h"}, {}),
    ],
)
def test_startup_variables(env, startup):
    """The variables an interpreter reads as it starts are every PYTHON* and LC_*, LANG and HOME, and no others."""
    assert startup_variables(env) == startup


def test_absolute_shebang_is_warm(scripts):
    """A script whose #! line names a --warm-python interpreter starts from its pool, argv[0] as the kernel gives it."""
    script = scripts("a.py", f"#!{PYTHON}\nprint(1)\n")
    pool = FakePool()
    spawner = WarmSpawner({PYTHON: pool})
    assert spawner.choose(script, script, [script.encode(), b"form=1"], ENV) == (pool, PYTHON, [b"form=1"])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"#!{PYTHON} -u\n", "its #! line has interpreter options"),
        (f"#!/usr/bin/env -S {PYTHON} -u\n", "its #! line has interpreter options"),
        ("print(1)\n", "no #! line"),
        ("#!/bin/sh\necho\n", "/bin/sh is not a --warm-python interpreter"),
        ("#!/usr/bin/python3.11\n", "/usr/bin/python3.11 is not a --warm-python interpreter"),
        ("#!/usr/bin/env no-such-python\n", "no-such-python is not a --warm-python interpreter"),
    ],
)
def test_exec_reasons(scripts, text, reason):
    """A script that cannot start warm execs, and the spawner says why."""
    script = scripts("a.py", text)
    assert WarmSpawner({PYTHON: FakePool()}).choose(script, script, [script.encode()], ENV) == reason


def test_env_name_is_found_on_the_scripts_path(scripts):
    """#!/usr/bin/env NAME starts from the pool of the program NAME finds on the script's PATH, seen as NAME."""
    bin_dir = tempfile.mkdtemp(prefix="cgiserve-warm-bin-")
    interpreter = os.path.join(bin_dir, "python3")
    Path(interpreter).write_text("#!/bin/sh\n")
    os.chmod(interpreter, 0o755)
    try:
        script = scripts("a.py", "#!/usr/bin/env python3\n")
        pool = FakePool()
        env = {**ENV, "PATH": bin_dir + ":/usr/bin"}
        assert WarmSpawner({interpreter: pool}).choose(script, script, [script.encode()], env) == (pool, "python3", [])
        assert WarmSpawner({PYTHON: pool}).choose(script, script, [script.encode()], env) == (
            f"{interpreter} is not a --warm-python interpreter"
        )
    finally:
        os.unlink(interpreter)
        os.rmdir(bin_dir)


def test_mapped_interpreter(scripts):
    """A script run by an --interpreter mapping starts from that interpreter's pool whatever its first line, its arguments after it."""
    script = scripts("a.py", "not a #! line\n", mode=0o644)
    pool = FakePool()
    argv = [PYTHON.encode(), script.encode(), b"form=1"]
    assert WarmSpawner({PYTHON: pool}).choose(script, PYTHON, argv, ENV) == (pool, PYTHON, [b"form=1"])


def test_startup_variables_must_match(scripts):
    """A script whose PYTHON*, LC_*, LANG or HOME differ from the helper's execs."""
    script = scripts("a.py", f"#!{PYTHON}\n")
    spawner = WarmSpawner({PYTHON: FakePool()})
    for extra in ({"PYTHONHASHSEED": "0"}, {"LC_ALL": "C"}, {"HOME": "/elsewhere"}):
        assert "start-up variables" in spawner.choose(script, script, [script.encode()], {**ENV, **extra})


def test_unreadable_script(scripts):
    """A script whose #! line cannot be read execs (and the exec reports the real error)."""
    assert "cannot be read" in WarmSpawner({PYTHON: FakePool()}).choose("/nonexistent.py", "/nonexistent.py", [], ENV)


class SpawnerTests(SynchronousTestCase):
    """The spawner hands over, or execs through its fallback, and marks the protocol either way."""

    def setUp(self) -> None:
        self.top = tempfile.mkdtemp(prefix="cgiserve-warm-")
        self.script = os.path.join(self.top, "a.py")
        Path(self.script).write_text(f"#!{PYTHON}\n")
        self.addCleanup(lambda: (os.unlink(self.script), os.rmdir(self.top)))
        self.execs: list = []

    def fallback(self, reactor, protocol, executable, argv, env, cwd, stdin):
        self.execs.append(executable)
        return "exec'd"

    def spawn(self, pool):
        protocol = FakeProtocol(self.script)
        spawner = WarmSpawner({PYTHON: pool}, fallback=self.fallback)
        return protocol, spawner(None, protocol, self.script, [self.script.encode()], ENV, self.top, True)

    def test_not_eligible_execs(self):
        """An ineligible script goes to the fallback at once, with its reason."""
        protocol, result = self.spawn(FakePool(startup={"PYTHONPATH": "/x"}))
        self.assertEqual((result, self.execs), ("exec'd", [self.script]))
        self.assertFalse(protocol.warm)
        self.assertIn("start-up variables", protocol.exec_reason)

    def test_pool_not_ready_execs(self):
        """A pool that cannot take the request now (it says why) means exec."""
        protocol, result = self.spawn(FakePool(answer="warm helper starting"))
        self.assertEqual((result, protocol.exec_reason), ("exec'd", "warm helper starting"))

    def test_handover_started(self):
        """A handover that starts the script gives its process, and the protocol is marked warm."""
        started = Deferred()
        pool = FakePool(answer=started)
        protocol, result = self.spawn(pool)
        self.assertNoResult(result)
        self.assertEqual(pool.handovers, [(self.top, self.script, PYTHON, [])])
        started.callback("process")
        self.assertEqual(self.successResultOf(result), "process")
        self.assertTrue(protocol.warm)
        self.assertEqual(self.execs, [])

    def test_handover_started_tells_the_limits(self):
        """A script started warm under limits has them on its protocol, which can then say which one it hit."""
        started = Deferred()
        limits = Limits(cpu_seconds=1)
        protocol, result = self.spawn(FakePool(answer=started, limits=limits))
        started.callback("process")
        self.assertEqual(self.successResultOf(result), "process")
        self.assertIs(protocol.limits, limits)

    def test_handover_refused_execs(self):
        """A helper that refuses, or dies with the request unread, means exec with its reason."""
        started = Deferred()
        protocol, result = self.spawn(FakePool(answer=started))
        started.errback(HandoverFailed("warm helper refused: malformed run request"))
        self.assertEqual(self.successResultOf(result), "exec'd")
        self.assertEqual(protocol.exec_reason, "warm helper refused: malformed run request")
        self.assertFalse(protocol.warm)


@pytest.mark.parametrize(
    ("fresh", "warm", "difference"),
    [
        (("exit 0", b"a\nb\n", b""), ("exit 0", b"a\nb\n", b""), None),
        (("exit 0", b"a\nb\n", b""), ("exit 0", b"a\nc\n", b""), "stdout: fresh b'b', warm b'c'"),
        (("exit 0", b"a\n", b""), ("exit 0", b"a\nmore\n", b""), "stdout: fresh None, warm b'more'"),
        (("exit 1", b"", b""), ("exit 0", b"", b""), "ended: fresh 'exit 1', warm 'exit 0'"),
        (("exit 0", b"", b"x\n"), ("exit 0", b"", b"y\n"), "stderr: fresh b'x', warm b'y'"),
    ],
)
def test_probe_difference(fresh, warm, difference):
    """The self-test names the first line in which a warm probe run differs from a fresh one."""
    assert _difference(fresh, warm) == difference
