"""Packaging: the plugin is found by twistd after pip install and pip install -e, and never ships Twisted's own files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.server import CHECKOUT

# What a fresh clone would not have: build output, caches, local venvs.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "dropin.cache", ".venv", "venv", ".pytest_cache", "_trial_temp"
)
_PIP_SECONDS = 300


def test_no_twisted_package_init_in_checkout():
    """The checkout has no twisted/__init__.py nor twisted/plugins/__init__.py, which would shadow Twisted's own."""
    assert (CHECKOUT / "twisted" / "plugins" / "cgiserve_plugin.py").is_file()
    assert not (CHECKOUT / "twisted" / "__init__.py").exists()
    assert not (CHECKOUT / "twisted" / "plugins" / "__init__.py").exists()


@pytest.fixture(scope="module")
def workdir():
    """A temporary directory holding a copy of the checkout's sources, so builds leave the checkout alone."""
    top = Path(tempfile.mkdtemp(prefix="cgiserve-packaging-"))
    shutil.copytree(CHECKOUT, top / "src", ignore=_NOT_SOURCE)
    (top / "elsewhere").mkdir()
    yield top
    shutil.rmtree(top, ignore_errors=True)


def clean_env() -> dict[str, str]:
    """The environment without anything that would put the checkout on the path."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def run(*command, cwd, timeout=_PIP_SECONDS) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


def make_venv(workdir: Path, name: str) -> Path:
    """A fresh venv that sees nothing installed outside it, not even pip, returning its python."""
    venv = workdir / name
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=workdir)
    return venv / "bin" / "python"


def pip_install(python: Path, *requirements, workdir: Path) -> None:
    """Install into python's venv with the test runner's own pip, so the venv needs none, skipping .pyc compiling for speed."""
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile", *requirements, cwd=workdir)


def twistd_help(python: Path, workdir: Path) -> str:
    """The venv's twistd --help, run away from any source tree."""
    return run(python, "-c", "from twisted.scripts.twistd import run; run()", "--help", cwd=workdir / "elsewhere").stdout


def imported_from(python: Path, workdir: Path) -> Path:
    code = "import cgiserve; print(cgiserve.__file__)"
    return Path(run(python, "-c", code, cwd=workdir / "elsewhere").stdout.strip())


def lists_plugin(help_text: str, name: str) -> bool:
    return any(line.split()[:1] == [name] for line in help_text.splitlines())


def lists_cgiserve(help_text: str) -> bool:
    return lists_plugin(help_text, "cgiserve")


def recorded_files(site_packages: Path, project: str) -> set[str]:
    """The paths a distribution's RECORD says its install wrote, relative to site-packages."""
    (record,) = site_packages.glob(f"{project}-*.dist-info/RECORD")
    return {line.split(",")[0] for line in record.read_text().splitlines() if line}


def test_venv_without_install_lacks_plugin(workdir):
    """A fresh venv with only Twisted installed runs twistd, which lists Twisted's plugins but not cgiserve (so the install tests below can fail)."""
    python = make_venv(workdir, "bare")
    pip_install(python, f"twisted=={version('twisted')}", workdir=workdir)
    help_text = twistd_help(python, workdir)
    assert lists_plugin(help_text, "web")
    assert not lists_cgiserve(help_text)


def test_pip_install_lists_plugin(workdir):
    """After pip install . into a fresh venv, its twistd --help lists cgiserve, imported from that venv, and the install wrote neither of Twisted's __init__.py files."""
    python = make_venv(workdir, "installed")
    pip_install(python, workdir / "src", workdir=workdir)
    assert lists_cgiserve(twistd_help(python, workdir))
    venv = workdir / "installed"
    assert venv in imported_from(python, workdir).parents
    site_packages = next(venv.glob("lib/python*/site-packages"))
    assert (site_packages / "twisted" / "plugins" / "cgiserve_plugin.py").is_file()
    # Twisted itself is installed here too, so its __init__.py files exist; they must not be cgiserve's.
    cgiserve_files = recorded_files(site_packages, "cgiserve")
    assert "twisted/plugins/cgiserve_plugin.py" in cgiserve_files
    assert "twisted/__init__.py" not in cgiserve_files
    assert "twisted/plugins/__init__.py" not in cgiserve_files


def test_pip_install_editable_lists_plugin(workdir):
    """After pip install -e . into a fresh venv, its twistd --help lists cgiserve, imported from the source tree."""
    python = make_venv(workdir, "editable")
    pip_install(python, "-e", workdir / "src", workdir=workdir)
    assert lists_cgiserve(twistd_help(python, workdir))
    assert workdir / "src" in imported_from(python, workdir).parents


def test_wheel_has_no_twisted_init(workdir):
    """The built wheel holds the plugin and the package, and neither twisted/__init__.py nor twisted/plugins/__init__.py."""
    dist = workdir / "dist"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, workdir / "src", cwd=workdir)
    (wheel,) = dist.glob("cgiserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "twisted/plugins/cgiserve_plugin.py" in names
    assert "cgiserve/tap.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(name.startswith("tests/") for name in names)
