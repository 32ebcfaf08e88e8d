"""Test support for TLS: openssl-made certificates and prod.conf run on loopback.

Shared by the prod.conf and TLS federation tests (tests/broker_config/).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.paths import REPO

PROD_CONF = REPO / "broker_config" / "prod.conf"

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> None:
    _openssl("req", "-x509", *_EC, "-keyout", str(directory / f"{name}.key"),
             "-out", str(directory / f"{name}.crt"), "-days", "2", "-subj", f"/CN={name}")


def _issue(directory: Path, ca: str, name: str, cn: str, ext: str | None = None) -> None:
    _openssl("req", *_EC, "-keyout", str(directory / f"{name}.key"),
             "-out", str(directory / f"{name}.csr"), "-subj", f"/CN={cn}")
    extra: list[str] = []
    if ext is not None:
        (directory / f"{name}.ext").write_text(ext)
        extra = ["-extfile", str(directory / f"{name}.ext")]
    _openssl("x509", "-req", "-in", str(directory / f"{name}.csr"),
             "-CA", str(directory / f"{ca}.crt"), "-CAkey", str(directory / f"{ca}.key"),
             "-CAcreateserial", "-days", "2", *extra, "-out", str(directory / f"{name}.crt"))


def make_certs(directory: Path, *, clients: bool = True) -> None:
    """A CA and a server certificate for 127.0.0.1; with ``clients``, a client certificate
    (CN dev-a) from that CA and one from a rogue CA."""
    _ca(directory, "ca")
    _issue(directory, "ca", "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\n")
    if clients:
        _issue(directory, "ca", "client", "dev-a")
        _ca(directory, "rogue-ca")
        _issue(directory, "rogue-ca", "rogue-client", "dev-a")


def prod_template(certs: Path, *, client_certificates: bool = False) -> str:
    """prod.conf with its deployment paths turned into the broker supervisor's placeholders
    (and the TLS port moved to a free loopback port)."""
    text = PROD_CONF.read_text()
    replacements = {
        "user mosquitto": "user {user}",
        "/run/mosquitto/mosquitto.pid": "{pid_file}",
        "/etc/mosquitto/fedmq/passwd": "{password_file}",
        "/etc/mosquitto/fedmq/acl": "{acl_file}",
        "/var/lib/mosquitto/": "{persistence_dir}/",
        "autosave_interval 60": "autosave_interval {autosave_interval}",
        "max_packet_size 8388608": "max_packet_size {max_packet_size}",
        "/var/log/mosquitto/mosquitto.log": "{log_file}",
        "log_type information": "{log_types}",
        "listener 8883\n": "listener {port} 127.0.0.1\n",
        "/etc/mosquitto/fedmq/certs/": f"{certs}/",
    }
    if client_certificates:  # the variant prod.conf documents, uncommented
        replacements["require_certificate false"] = "require_certificate true"
        replacements["#use_identity_as_username true"] = "use_identity_as_username true"
    for old, new in replacements.items():
        assert old in text, f"prod.conf no longer contains {old!r}"
        text = text.replace(old, new)
    return text + "\n{listener_extra}\n"
