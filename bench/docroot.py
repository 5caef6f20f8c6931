"""Build the temporary document root shared by every server."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

STATIC = b"x" * 1023 + b"\n"
HELLO = b"hello\n"
BIG_BYTES = 500 * 1024 * 1024
BLOCK = 64 * 1024
# The system Python starts faster than a pyenv one, and stays runnable when
# http.server (running as root) drops to user nobody for CGI.
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
# Common standard library modules, all in cgiserve's default --warm-preload
# list: what a warm helper has imported before the script starts.
IMPORTED = ("base64", "collections", "datetime", "decimal", "email.message",
            "email.utils", "hashlib", "html", "json", "re", "string",
            "textwrap", "urllib.parse", "uuid")
SLEEP_SECONDS = 2
# The Python scripts, whose #! line names PYTHON with no options: those a
# server run with --warm-python PYTHON starts warm.
WARM_SCRIPTS = ("hello-py.cgi", "imports-py.cgi", "sleep-py.cgi")

SCRIPTS = {
    "hello-sh.cgi": """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\nhello\\n'
""",
    "hello-py.cgi": f"""#!{PYTHON}
import sys
sys.stdout.write("Content-Type: text/plain\\r\\n\\r\\nhello\\n")
""",
    "imports-py.cgi": f"""#!{PYTHON}
import sys
import {", ".join(IMPORTED)}
sys.stdout.write("Content-Type: text/plain\\r\\n\\r\\nhello\\n")
""",
    "sleep-py.cgi": f"""#!{PYTHON}
import sys, time
time.sleep({SLEEP_SECONDS})
sys.stdout.write("Content-Type: text/plain\\r\\n\\r\\nhello\\n")
""",
    # Read exactly CONTENT_LENGTH bytes: some servers hand the CGI the socket.
    "hash.cgi": """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
head -c "$CONTENT_LENGTH" | sha256sum
""",
    # exec keeps one process, so its /proc/PID/io wchar counts all it wrote.
    "big.cgi": f"""#!/bin/sh
printf 'Content-Type: application/octet-stream\\r\\n\\r\\n'
exec dd if=/dev/zero bs={BLOCK} count={BIG_BYTES // BLOCK} status=none
""",
}


def build(root):
    """Fill ``root`` with static.txt and cgi-bin/*.cgi (C, sh, Python).

    Everything is world-readable: http.server runs CGI as nobody under root.
    """
    os.chmod(root, 0o755)
    with open(os.path.join(root, "static.txt"), "wb") as f:
        f.write(STATIC)
    cgi_bin = os.path.join(root, "cgi-bin")
    os.mkdir(cgi_bin)
    subprocess.run(
        ["gcc", "-O2", "-o", os.path.join(cgi_bin, "hello-c.cgi"),
         os.path.join(HERE, "hello.c")],
        check=True,
    )
    for name, text in SCRIPTS.items():
        path = os.path.join(cgi_bin, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
