"""Test certificates made with the `openssl` command: a CA, a server and a client certificate."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# EC keys: generating RSA keys would dominate the test's runtime.
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certs:
    """Paths of PEM files: `ca`, `server_*` (SAN localhost and 127.0.0.1), `client_*`, and a
    client certificate from an unrelated CA (`stranger_*`)."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    stranger_cert: str
    stranger_key: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(name: str, cwd: Path) -> None:
    _openssl(
        "req", "-x509", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=cwd,
    )  # fmt: skip


def _leaf(name: str, ca: str, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("req", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
             cwd=cwd)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


def make_certs(directory: Path) -> Certs:
    """Write a CA and certificates signed by it into `directory`."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to make test certificates")
    _ca("ca", directory)
    _ca("other-ca", directory)
    _leaf(
        "server",
        "ca",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        directory,
    )
    _leaf("client", "ca", "extendedKeyUsage=clientAuth\n", directory)
    _leaf("stranger", "other-ca", "extendedKeyUsage=clientAuth\n", directory)
    d = str(directory)
    return Certs(
        ca=f"{d}/ca.pem",
        server_cert=f"{d}/server.pem",
        server_key=f"{d}/server.key",
        client_cert=f"{d}/client.pem",
        client_key=f"{d}/client.key",
        stranger_cert=f"{d}/stranger.pem",
        stranger_key=f"{d}/stranger.key",
    )
