"""Helpers for the operations tests: a systemd-style launcher, free ports, certificates, JSON logs."""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from pathlib import Path

PYTHON = sys.executable

# Starts twistd with a listening socket on fd 3 the way systemd (227 and
# later) does: LISTEN_FDS=1, LISTEN_FDNAMES naming it, and LISTEN_PID set
# to the pid that twistd will have (this one: exec keeps it).
SYSTEMD_LAUNCHER = """
import os, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(50)
fd = sock.detach()
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_FDNAMES"] = "cgiserve.socket"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for localhost and 127.0.0.1, as PEM files in C{directory}."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def json_observer():
    """A twistd --logger: every log event as JSON, one per line, to the file named by CGISERVE_JSON_LOG."""
    from twisted.logger import jsonFileLogObserver

    return jsonFileLogObserver(open(os.environ["CGISERVE_JSON_LOG"], "a"))


def read_json_lines(path: Path) -> list[dict]:
    """The JSON objects of a file holding one per line (a record separator may lead each line)."""
    if not path.exists():
        return []
    return [json.loads(line.lstrip("\x1e")) for line in path.read_text().splitlines() if line.strip("\x1e ")]

