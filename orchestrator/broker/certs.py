"""TLS material for broker clients: client certificates issued with the ``openssl`` command
line (the server has no X.509 library), and ``ssl.SSLContext`` objects built from PEM text.

``fedmq device add`` calls :func:`issue_client_certificate` when the broker requires client
certificates; the service calls it for its own certificate when none is configured. The CN
is the client's MQTT username, which Mosquitto's ``use_identity_as_username`` turns into the
username the ACL's ``%u`` patterns see.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from schemas.topics import check_id

from .errors import BrokerError

__all__ = [
    "ClientCertificate",
    "client_context",
    "ensure_client_certificate",
    "issue_client_certificate",
    "read_ca_pem",
]

_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_CLIENT_EXT = ("basicConstraints=critical,CA:FALSE\n"
               "keyUsage=critical,digitalSignature\n"
               "extendedKeyUsage=clientAuth\n")


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    cert_pem: str
    key_pem: str


def read_ca_pem(ca_file: Path) -> str:
    """The CA certificate(s) of ``ca_file`` as PEM text; BrokerError (one line) if it is not
    readable or holds no certificate."""
    try:
        text = ca_file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerError(f"cannot read the CA file {ca_file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise BrokerError(f"the CA file {ca_file} holds no PEM certificate")
    return text


def issue_client_certificate(common_name: str, *, ca_file: Path, ca_key_file: Path,
                             days: int) -> ClientCertificate:
    """A fresh P-256 key and a client certificate for it (CN = ``common_name``) signed by
    the CA; checked against ``ca_file`` before it is returned. Blocking (runs openssl)."""
    check_id(common_name, "certificate name")  # also keeps "/" and "=" out of the subject
    if shutil.which("openssl") is None:
        raise BrokerError("client certificates need the openssl command, which is not "
                          "installed")
    with tempfile.TemporaryDirectory(prefix="fedmq-cert-") as tmp:  # mode 0700
        work = Path(tmp)
        key, csr, crt, ext = (work / n for n in ("client.key", "client.csr", "client.crt",
                                                   "client.ext"))
        ext.write_text(_CLIENT_EXT)
        _openssl("make a key", "req", "-new", *_EC_KEY, "-keyout", str(key), "-out", str(csr),
                 "-subj", f"/CN={common_name}")
        mismatch = BrokerError(f"the CA key {ca_key_file} does not belong to the CA "
                               f"certificate {ca_file}")
        try:
            _openssl(f"sign with the CA key {ca_key_file}", "x509", "-req", "-in", str(csr),
                     "-CA", str(ca_file), "-CAkey", str(ca_key_file),
                     "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(days),
                     "-extfile", str(ext), "-out", str(crt))
        except BrokerError as exc:
            raise (mismatch if "key values mismatch" in str(exc) else exc) from None
        try:  # older openssl signs with any key: the certificate must chain to ca_file
            _openssl("verify", "verify", "-CAfile", str(ca_file), str(crt))
        except BrokerError:
            raise mismatch from None
        return ClientCertificate(crt.read_text(encoding="ascii"),
                                 key.read_text(encoding="ascii"))


def ensure_client_certificate(directory: Path, common_name: str, *, ca_file: Path,
                              ca_key_file: Path, days: int) -> tuple[Path, Path]:
    """``(certificate, key)`` files for ``common_name`` in ``directory``, issued now unless
    they are there already (the key written 0600). Blocking."""
    cert, key = directory / f"{common_name}.crt", directory / f"{common_name}.key"
    if cert.exists() and key.exists():
        return cert, key
    issued = issue_client_certificate(common_name, ca_file=ca_file, ca_key_file=ca_key_file,
                                      days=days)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(key, issued.key_pem)
    _write_private(cert, issued.cert_pem)
    return cert, key


def client_context(ca_pem: str, cert_pem: str = "", key_pem: str = "") -> ssl.SSLContext:
    """A TLS client context that trusts ``ca_pem`` (the system's CAs when empty) and, given
    a certificate and key, presents them. BrokerError (one line) on unusable PEM."""
    try:
        context = ssl.create_default_context(cadata=ca_pem or None)
    except (ssl.SSLError, ValueError) as exc:
        raise BrokerError(f"the CA certificate is not usable: {exc}") from None
    if cert_pem:
        # ssl loads a certificate chain only from files: a private directory, gone at once
        with tempfile.TemporaryDirectory(prefix="fedmq-tls-") as tmp:
            cert, key = Path(tmp) / "client.crt", Path(tmp) / "client.key"
            _write_private(cert, cert_pem)
            _write_private(key, key_pem)
            try:
                context.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                raise BrokerError(f"the client certificate or key is not usable: {exc}"
                                  ) from None
    return context


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text)


def _openssl(what: str, *args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, text=True,
                       timeout=60)
    except subprocess.CalledProcessError as exc:
        lines = [ln for ln in (exc.stderr or "").splitlines() if ln.strip()]
        detail = _reason(lines[-1]) if lines else f"exit status {exc.returncode}"
        raise BrokerError(f"openssl could not {what}: {detail}") from None
    except subprocess.TimeoutExpired:
        raise BrokerError(f"openssl could not {what}: timed out") from None


_OPENSSL_ERROR = re.compile(r"^[0-9A-F]+:error:[0-9A-F]+:[^:]*:[^:]*:([^:]+)")


def _reason(line: str) -> str:
    """OpenSSL 3's ``40C7…:error:05800074:x509 certificate routines:FUNC:reason:file:line``
    reduced to its reason; other lines as they are."""
    m = _OPENSSL_ERROR.match(line)
    return m[1] if m else line.strip()
