"""Shared fixtures: a temporary document root with scripts, and a real server on it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.server import Server


@pytest.fixture
def docroot():
    """An empty document root under a fresh temporary directory (removed afterwards)."""
    top = Path(tempfile.mkdtemp(prefix="cgiserve-test-"))
    root = top / "root"
    root.mkdir()
    yield root
    shutil.rmtree(top, ignore_errors=True)


def sh(body: str) -> str:
    """A shell script: C{body} under a #!/bin/sh line."""
    return "#!/bin/sh\n" + body


def sha256_script(python: str) -> str:
    """A CGI script for C{python} that answers with CONTENT_LENGTH, the bytes of its stdin and their sha256."""
    return f"""#!{python}
import hashlib, os, sys
digest = hashlib.sha256()
count = 0
while True:
    block = sys.stdin.buffer.read1(1 << 20)
    if not block:
        break
    digest.update(block)
    count += len(block)
sys.stdout.write("Content-Type: text/plain\\r\\n\\r\\n")
sys.stdout.write(f"{{os.environ.get('CONTENT_LENGTH', '-')}} {{count}} {{digest.hexdigest()}}\\n")
"""


def write_script(root: Path, name: str, body: str, mode: int = 0o755) -> Path:
    """Write an executable script under the root and return its path."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(mode)
    return path


@pytest.fixture
def serve(docroot):
    """Start cgiserve on the docroot with extra options; stopped after the test."""
    servers = []

    def start(*options, root=None, **kwargs):
        server = Server(root or docroot, *options, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
