"""The README tells the truth: its option reference and its commands match the code and CI."""

from __future__ import annotations

import re
from pathlib import Path

from cgiserve.tap import Options

CHECKOUT = Path(__file__).resolve().parent.parent
README = (CHECKOUT / "README.rst").read_text()


def table_rows() -> set[str]:
    """The options named in the first column of the README's option table."""
    border = re.search(r"^=+  =+$", README, re.MULTILINE).group(0)
    table = README.split(border)[1]
    return set(re.findall(r"^``--([a-z][a-z0-9-]+)", table, re.MULTILINE))


def option_names() -> set[str]:
    """Every long option of `twistd cgiserve`, as --help prints them."""
    help_text = str(Options())
    return set(re.findall(r"--([a-z][a-z0-9-]+)=?", help_text)) - {"help", "version"}


def test_every_option_is_in_the_readme_reference():
    """Each option --help documents has a row in the README's option table."""
    assert option_names() - table_rows() == set()


def test_the_readme_documents_no_option_that_does_not_exist():
    """The README's option table names only options the server has."""
    assert table_rows() - option_names() == set()


def test_ci_runs_the_readme_test_command():
    """.ci/run takes its test command from the README, and the README has exactly one."""
    commands = re.findall(r"^ +python3 -m venv .*pytest.*$", README, re.MULTILINE)
    assert len(commands) == 1
    assert "grep -m1 -E '^ +python3 -m venv .*pytest' README.rst" in (CHECKOUT / ".ci" / "run").read_text()


def test_readme_serves_the_examples_with_twistd():
    """The first command installs cgiserve and serves examples/ with twistd."""
    first = re.search(r"^ +(python3 -m venv .*)$", README, re.MULTILINE).group(1)
    assert "pip install ." in first
    assert "twistd -n" in first and "cgiserve --root examples" in first
    assert (CHECKOUT / "examples" / "index.html").is_file()
