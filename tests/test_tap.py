"""The cgiserve command line: Options parsed directly, and twistd's --help and usage errors in a subprocess."""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from twisted.python import usage

from cgiserve.tap import Options
from tests.server import CHECKOUT

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


@pytest.fixture
def tmp_cwd(monkeypatch):
    """A fresh temporary working directory (removed afterwards)."""
    path = os.path.realpath(tempfile.mkdtemp(prefix="cgiserve-tap-"))
    monkeypatch.chdir(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def option_names() -> list[str]:
    """Every long option the Options class defines, as spelled on the command line."""
    names = [entry[0] for entry in Options.optParameters] + [entry[0] for entry in Options.optFlags]
    names += [name[len("opt_") :].replace("_", "-") for name, _ in inspect.getmembers(Options) if name.startswith("opt_")]
    return sorted(set(names) - {"help", "version"})


# -- defaults


def test_defaults(tmp_cwd):
    """With no options the root is the working directory, listening on 127.0.0.1:8000, no extras."""
    options = parse()
    assert options["root"] == tmp_cwd
    assert options["listen"] == ["tcp:8000:interface=127.0.0.1"]
    assert options["index"] == []
    assert options["pass-env"] == []
    assert options["set-env"] == {}
    assert options["interpreter"] == {}
    for flag in ("no-listing", "pass-auth", "no-form-argv", "isindex-argv"):
        assert not options[flag]


def test_default_config(tmp_cwd):
    """The default configuration lists directories, uses index.html and index.htm, passes forms as argv."""
    config = parse().config()
    assert config.root == tmp_cwd
    assert config.index_names == ("index.html", "index.htm")
    assert config.listing is True
    assert config.form_argv is True
    assert config.isindex_argv is False
    assert config.interpreters == {}
    assert config.environ.pass_auth is False
    assert config.environ.inherited == {}
    assert config.environ.extra == {}


def test_config_hides_twistd_files_in_cwd(tmp_cwd):
    """The configuration hides twistd.pid and twistd.log of the working directory."""
    hidden = parse().config().hidden
    assert os.path.join(tmp_cwd, "twistd.pid") in hidden
    assert os.path.join(tmp_cwd, "twistd.log") in hidden


def test_root_is_resolved(tmp_cwd):
    """--root is stored as the directory's real path, symlinks resolved."""
    os.mkdir("real")
    os.symlink("real", "link")
    assert parse("--root", "link")["root"] == os.path.join(tmp_cwd, "real")


def test_flags(tmp_cwd):
    """Each flag reaches the configuration."""
    config = parse("--no-listing", "--pass-auth", "--no-form-argv", "--isindex-argv").config()
    assert config.listing is False
    assert config.environ.pass_auth is True
    assert config.form_argv is False
    assert config.isindex_argv is True


# -- repeatable options


def test_listen_repeatable(tmp_cwd):
    """--listen given twice keeps both endpoints, in order, and no default."""
    options = parse("--listen", "tcp:0:interface=127.0.0.1", "--listen", "unix:" + os.path.join(tmp_cwd, "s.sock"))
    assert options["listen"] == ["tcp:0:interface=127.0.0.1", "unix:" + os.path.join(tmp_cwd, "s.sock")]


def test_index_repeatable(tmp_cwd):
    """--index given twice replaces the defaults with both names, in order."""
    assert parse("--index", "start.htm", "--index", "home.html").config().index_names == ("start.htm", "home.html")


def test_pass_env_repeatable(tmp_cwd, monkeypatch):
    """--pass-env given twice passes both variables that are set, and not one that is unset."""
    monkeypatch.setenv("CGISERVE_TAP_ONE", "1")
    monkeypatch.setenv("CGISERVE_TAP_TWO", "2")
    monkeypatch.setenv("CGISERVE_TAP_OTHER", "x")
    monkeypatch.delenv("CGISERVE_TAP_UNSET", raising=False)
    options = parse("--pass-env", "CGISERVE_TAP_ONE", "--pass-env", "CGISERVE_TAP_TWO", "--pass-env", "CGISERVE_TAP_UNSET")
    assert options.config().environ.inherited == {"CGISERVE_TAP_ONE": "1", "CGISERVE_TAP_TWO": "2"}


def test_set_env_repeatable(tmp_cwd):
    """--set-env given several times sets each NAME=VALUE; the value may hold '=' or be empty."""
    options = parse("--set-env", "A=1", "--set-env", "B=x=y", "--set-env", "EMPTY=")
    assert options.config().environ.extra == {"A": "1", "B": "x=y", "EMPTY": ""}


def test_interpreter_repeatable(tmp_cwd):
    """--interpreter maps each extension (dot added if missing) to the program's real path."""
    options = parse("--interpreter", ".py=python3", "--interpreter", "sh=sh")
    assert options.config().interpreters == {
        ".py": os.path.realpath(shutil.which("python3")),
        ".sh": os.path.realpath(shutil.which("sh")),
    }


def test_interpreter_absolute_path(tmp_cwd):
    """--interpreter accepts an absolute program path."""
    assert parse("--interpreter", f".py={sys.executable}")["interpreter"] == {".py": os.path.realpath(sys.executable)}


# -- bad values


@pytest.mark.parametrize(
    "args",
    [
        ["--listen", "bogus:1"],
        ["--listen", "tcp:notaport"],
        ["--listen", ""],
        ["--listen", "tcp:80:nosuchoption=1"],
        ["--root", "/nonexistent/cgiserve-root"],
        ["--root", "/etc/hostname"],
        ["--set-env", "NOEQUALS"],
        ["--set-env", "=value"],
        ["--interpreter", ".py"],
        ["--interpreter", ".py="],
        ["--interpreter", "=python3"],
        ["--interpreter", ".py=/nonexistent/program"],
        ["--interpreter", ".py=no-such-program-cgiserve"],
        ["--index", ".hidden"],
        ["--index", "a/b"],
        ["--index", ""],
        ["--no-such-option"],
    ],
    ids=lambda args: " ".join(args) or "empty",
)
def test_bad_values_are_usage_errors(tmp_cwd, args):
    """A bad option value raises UsageError, never another exception."""
    with pytest.raises(usage.UsageError):
        parse(*args)


@pytest.mark.parametrize(
    "listen, why",
    [
        ("tcp:99999", "port 99999 is not between 0 and 65535"),
        pytest.param(
            "ssl:0:privateKey=/nonexistent/key.pem",
            "/nonexistent/key.pem: no such file or directory",
            marks=pytest.mark.skipif(importlib.util.find_spec("OpenSSL") is None, reason="needs the tls extra"),
        ),
    ],
)
def test_endpoint_that_cannot_listen_exits(tmp_cwd, listen, why):
    """An endpoint that could never listen is no usage mistake: SystemExit with the one line, no usage text."""
    with pytest.raises(SystemExit) as raised:
        parse("--listen", "tcp:0:interface=127.0.0.1", "--listen", listen)
    assert raised.value.code == f"cgiserve: cannot listen on {listen}: {why}"


# -- help text


def test_option_docstrings_are_one_line():
    """Every opt_* method's docstring, its --help text, is one line."""
    for name, method in inspect.getmembers(Options):
        if name.startswith("opt_") and name not in ("opt_help", "opt_version"):
            assert method.__doc__ and "\n" not in method.__doc__.strip(), name


def test_table_options_have_help():
    """Every parameter and flag has a one-line description."""
    for entry in [*Options.optParameters, *Options.optFlags]:
        description = entry[3] if len(entry) > 3 and entry in Options.optParameters else entry[2]
        assert description and "\n" not in description, entry[0]


def twistd(*args, env=None, timeout=60):
    environment = dict(os.environ, PYTHONPATH=str(CHECKOUT), **(env or {}))
    return subprocess.run(
        [*TWISTD, *args],
        cwd=tempfile.gettempdir(),
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_every_option():
    """twistd cgiserve --help lists every option, each with its help on the option's own line."""
    result = twistd("cgiserve", "--help", env={"COLUMNS": "1000"})
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    for name in option_names():
        pattern = re.compile(r"^\s+(-\w, )?--" + re.escape(name) + r"=?\s+\S")
        assert [line for line in lines if pattern.match(line)], name


def test_help_mentions_cgiserve_in_twistd():
    """twistd --help lists cgiserve among its commands."""
    result = twistd("--help")
    assert result.returncode == 0
    assert re.search(r"^\s+cgiserve\s+\S", result.stdout, re.MULTILINE)


@pytest.mark.parametrize(
    "args, mention",
    [
        (["--no-such-option"], "--no-such-option"),
        (["--root", "/nonexistent/cgiserve-root"], "/nonexistent/cgiserve-root"),
        (["--listen", "bogus:1"], "bogus:1"),
        (["--set-env", "NOEQUALS"], "NOEQUALS"),
        (["--listen", "tcp:99999"], "tcp:99999"),
    ],
)
def test_bad_option_at_startup(args, mention):
    """A bad option stops twistd with a non-zero status, one error line naming it, and no traceback."""
    result = twistd("-n", "--pidfile=", "cgiserve", *args, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    mentions = [line for line in output.splitlines() if mention in line]
    assert len(mentions) == 1, output
    assert output.strip().splitlines()[-1] == mentions[0]


# -- --workers


def test_workers_default_to_one_and_auto_to_the_cores(tmp_cwd):
    """--workers is 1 unless given; auto is one per CPU core this process may use."""
    assert parse()["workers"] == 1
    assert parse("--workers", "3")["workers"] == 3
    assert parse("--workers", "auto")["workers"] == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "1 or more, or auto"),
        (["--workers", "many"], "auto"),
        (["--workers", "3", "--max-scripts", "2"], "--max-scripts 2: fewer than --workers 3"),
        (["--workers", "3", "--max-queue", "2"], "--max-queue 2: fewer than --workers 3"),
        (["--workers", "2", "--listen", "stdio:"], "--workers serves only tcp:"),
    ],
)
def test_workers_refused(tmp_cwd, args, message):
    """A worker count that is not one, limits that cannot be shared, or an endpoint no worker can be handed: usage errors."""
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        parse(*args)


def test_options_keep_their_command_line(tmp_cwd):
    """The parsed command line is kept as given, for the workers to parse afresh."""
    args = ["--workers", "2", "--listen", "tcp:0", "--index", "home.html"]
    assert parse(*args).argv == args


def test_master_imports_no_twisted_web(tmp_cwd):
    """The master of --workers builds its service without importing twisted.web or the serving tree."""
    code = (
        "import sys\n"
        "from cgiserve.tap import Options, makeService\n"
        "options = Options()\n"
        "options.parseOptions(['--workers', '2', '--listen', 'tcp:0'])\n"
        "makeService(options)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('twisted.web', 'cgiserve.serve', 'cgiserve.site'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_cwd, env=dict(os.environ, PYTHONPATH=str(CHECKOUT)), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- sizes and per-script limits


@pytest.mark.parametrize(
    "value, size",
    [("0", 0), ("1000", 1000), ("64k", 64 * 1024), ("64K", 64 * 1024), ("200M", 200 * 1024**2), ("2g", 2 * 1024**3)],
)
def test_sizes_take_suffixes(tmp_cwd, value, size):
    """Every option that takes bytes takes K, M and G for powers of 1024, in either case."""
    for name in ("max-body", "max-stderr", "limit-memory", "limit-file-size"):
        assert parse(f"--{name}", value)[name] == size


@pytest.mark.parametrize("value", ["", "-1", "1.5G", "10T", "M", "64KB", "0x10", " 5"])
def test_bad_sizes_are_usage_errors(tmp_cwd, value):
    """A size that is not a whole number with at most one of K, M and G is a usage error saying what is wanted."""
    with pytest.raises(usage.UsageError, match="a number of bytes, 0 or more, with K, M or G"):
        parse("--max-body", value)


def test_limits_default_to_none(tmp_cwd):
    """Without --limit-* options scripts start under no limits of the server's making."""
    options = parse()
    assert not options.config().limits
    assert options["prlimit"] is None


def test_limits_in_the_config(tmp_cwd):
    """The --limit-* options make the configuration's limits, and find prlimit to start scripts under them."""
    options = parse(
        "--limit-cpu", "2", "--limit-memory", "256M", "--limit-processes", "40", "--limit-file-size", "1G", "--limit-files", "64"
    )
    limits = options.config().limits
    assert (limits.cpu_seconds, limits.memory_bytes, limits.processes, limits.file_size_bytes, limits.files) == (
        2, 256 * 1024**2, 40, 1024**3, 64,
    )  # fmt: skip
    assert os.path.basename(options["prlimit"]) == "prlimit"


@pytest.mark.parametrize("name", ["limit-cpu", "limit-processes", "limit-files"])
def test_bad_limit_counts_are_usage_errors(tmp_cwd, name):
    """A count limit takes a whole number, 0 or more."""
    for value in ("-1", "1.5", "many"):
        with pytest.raises(usage.UsageError):
            parse(f"--{name}", value)


def test_limit_above_the_servers_hard_limit_refused(tmp_cwd):
    """A limit no script could be given (above the server's own hard limit) is refused at startup, by name."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    with pytest.raises(usage.UsageError, match=re.escape(f"--limit-files {hard + 1}: above this server's own hard limit")):
        parse("--limit-files", str(hard + 1))
