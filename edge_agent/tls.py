"""The agent's TLS context, from the PEM text its bundle embeds.

The CA certificate is loaded from memory. Python's ``ssl`` loads a client certificate only
from files, so the certificate and key are written (0600, in a 0700 directory) next to the
agent's state file, where they stay as the device's copy of its credential.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path

from schemas import Bundle

from .errors import ConfigError

__all__ = ["tls_context", "tls_dir"]


def tls_dir(state_path: Path, device_id: str) -> Path:
    """Where the client certificate and key of ``device_id`` are kept."""
    return state_path.parent / f"{device_id}.tls"


def tls_context(bundle: Bundle, state_path: Path) -> ssl.SSLContext | None:
    """None without TLS; else a context that trusts the bundle's CA (and only it) and
    presents its client certificate, if it has one. One-line ConfigError for a bundle
    whose TLS material is missing or unusable. Blocking (file writes)."""
    if not bundle.tls:
        return None
    context = _trusting(bundle)
    if bundle.client_cert_pem:
        directory = tls_dir(state_path, bundle.device_id)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            cert, key = directory / "client.crt", directory / "client.key"
            _write_private(cert, bundle.client_cert_pem)
            _write_private(key, bundle.client_key_pem)
        except OSError as exc:
            raise ConfigError(f"cannot write the client certificate to {directory}: "
                              f"{exc.strerror or exc}") from None
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise ConfigError(f"the bundle's client certificate or key is not usable: "
                              f"{_why(exc)}") from None
    return context


def _trusting(bundle: Bundle) -> ssl.SSLContext:
    if bundle.ca_pem:
        try:
            return ssl.create_default_context(cadata=bundle.ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(f"the bundle's CA certificate is not usable: {_why(exc)}"
                              ) from None
    if bundle.ca_file:  # an older bundle: a CA file on this device
        try:
            return ssl.create_default_context(cafile=bundle.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA file {bundle.ca_file!r}: {_why(exc)}") from None
    raise ConfigError("the bundle asks for TLS but carries no CA certificate (ca_pem): "
                      "make it again with `fedmq device add` on a server with broker.ca_file")


def _why(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    text = getattr(exc, "strerror", None) or str(exc)
    return re.sub(r" \(_ssl\.c:\d+\)$", "", text)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)
