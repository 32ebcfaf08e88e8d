"""The operator's device commands: what ``fedmq device add|approve|revoke|reinstate`` do.

They work on the store and the broker's password file directly, next to a running service,
which notices through the registry generation (see :mod:`orchestrator.devices.registry`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from orchestrator.broker import BrokerError, generate_password
from orchestrator.broker.certs import issue_client_certificate, read_ca_pem
from orchestrator.config import Config
from orchestrator.devices.logins import password_file as _password_file
from orchestrator.devices.logins import reload_broker, restore_login
from orchestrator.devices.registry import bump_generation
from orchestrator.errors import OrchestratorError
from orchestrator.models.architecture import model_signature
from orchestrator.store import AuditEvent, Device, Role, Store
from schemas.bundle import Bundle
from schemas.signing import ENROLL_SECRET_BYTES

__all__ = [
    "DeviceCommandError",
    "approve",
    "provision",
    "reinstate_device",
    "reload_broker",
    "revoke",
    "write_private",
]


class DeviceCommandError(OrchestratorError):
    """An operator command cannot be carried out; the message is one line."""



async def provision(
    store: Store,
    config: Config,
    device_id: str,
    *,
    orchestrator_key: str,
    role: Role = "device",
    actor: str = "cli",
) -> Bundle:
    """Create a pending device with a fresh enrollment secret and broker credential; returns
    its bundle. Refuses an existing id."""
    if await store.get_device(device_id) is not None:
        raise DeviceCommandError(f"device {device_id!r} already exists")
    tls = await asyncio.to_thread(_bundle_tls, config, device_id)  # before anything is stored
    n_features, n_classes = await asyncio.to_thread(model_signature, config.model)
    secret = secrets.token_bytes(ENROLL_SECRET_BYTES)
    password = generate_password()
    passwords = _password_file(config)
    if passwords is None and config.broker.password is None:
        raise DeviceCommandError("no broker password file configured (broker.password_file)")
    await store.add_device(
        device_id, secret=secret, role=role, status="pending",
        audit=AuditEvent("added", actor, device=device_id, detail={"role": role}),
    )
    if passwords is not None:
        passwords.set(device_id, password)
        reload_broker(config)
    await bump_generation(store)
    broker = config.broker
    return Bundle(
        device_id=device_id, fed=config.federation.id,
        broker_host=broker.advertised_host or broker.host,
        broker_port=broker.advertised_port or broker.port,
        mqtt_username=device_id, mqtt_password=password, orchestrator_key=orchestrator_key,
        enroll_secret=secret.hex(), tls=broker.tls, role=role, ca_pem=tls.ca_pem,
        client_cert_pem=tls.cert_pem, client_key_pem=tls.key_pem,
        n_features=n_features, n_classes=n_classes,
    )


@dataclass(frozen=True, slots=True)
class _BundleTls:
    ca_pem: str = ""
    cert_pem: str = ""
    key_pem: str = ""


def _bundle_tls(config: Config, username: str) -> _BundleTls:
    """The TLS material a new bundle embeds: the CA certificate itself (never a path on
    this host) and, when the broker requires client certificates, a fresh certificate
    (CN = the device's MQTT username) and key. Blocking (file reads, openssl)."""
    broker = config.broker
    if not broker.tls:
        return _BundleTls()
    if broker.ca_file is None:
        raise DeviceCommandError("broker.tls is on but broker.ca_file is not set: a bundle "
                                 "must carry the CA that signed the broker's certificate")
    try:
        ca_pem = read_ca_pem(broker.ca_file)
        if not broker.client_certificates:
            return _BundleTls(ca_pem)
        assert broker.ca_key_file is not None  # the config checks it
        issued = issue_client_certificate(username, ca_file=broker.ca_file,
                                          ca_key_file=broker.ca_key_file,
                                          days=broker.client_cert_days)
    except BrokerError as exc:
        raise DeviceCommandError(str(exc)) from None
    return _BundleTls(ca_pem, issued.cert_pem, issued.key_pem)


async def approve(store: Store, device_id: str, *, actor: str = "cli") -> Device:
    """Activate a device whose key waits for approval."""
    device = await _existing(store, device_id)
    if device.status == "active":
        raise DeviceCommandError(f"device {device_id!r} is already active")
    if device.status != "awaiting_approval":
        hint = " (it has not enrolled yet)" if device.status == "pending" else ""
        raise DeviceCommandError(f"device {device_id!r} is {device.status}, "
                                 f"not awaiting approval{hint}")
    await store.set_status(device_id, "active",
                           audit=AuditEvent("approved", actor, device=device_id))
    await bump_generation(store)
    return await _existing(store, device_id)


async def revoke(store: Store, config: Config, device_id: str, *, actor: str = "cli",
                 reason: str = "", immediate: bool = False) -> Device:
    """Disable the device's key (ingest refuses it from the next registry poll, about a
    second). Its broker credential stays until the service has told the device
    (``Control(revoke)``) and the device confirmed, or ``federation.revoke_grace_s`` passed
    (see :mod:`orchestrator.devices.revocation`); with no service running that happens at its
    next start. ``immediate``: remove the credential now (and reload the broker) — the device
    is then never told and sees only refused connections."""
    device = await _existing(store, device_id)
    if device.status == "revoked":
        raise DeviceCommandError(f"device {device_id!r} is already revoked")
    await store.set_status(device_id, "revoked", audit=AuditEvent(
        "revoked", actor, device=device_id, reason=reason or None,
        detail={"credential": "removed" if immediate else "after_notice"}))
    if immediate:
        passwords = _password_file(config)
        if passwords is not None and passwords.exists():
            passwords.remove(device_id)
            reload_broker(config)
            await store.append_audit(AuditEvent("credential_removed", actor, device=device_id,
                                                reason="immediate"))
    await bump_generation(store)
    return await _existing(store, device_id)


async def _existing(store: Store, device_id: str) -> Device:
    device = await store.get_device(device_id)
    if device is None:
        raise DeviceCommandError(f"no device {device_id!r}")
    return device


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new or existing file with mode 0600 (set before any byte lands)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)


async def reinstate_device(store: Store, config: Config, device_id: str, *,
                           actor: str = "cli", reason: str = "") -> None:
    """Operator: make an isolated device active again (audited) and restore its broker login
    if a flood had suspended it. A running service notices within about a second, forgets
    the device's flags and tells it (``Control(reinstate)``). Raises
    :class:`DeviceCommandError` unless it is isolated."""
    device = await store.get_device(device_id)
    if device is None:
        raise DeviceCommandError(f"no device {device_id!r}")
    if device.status != "isolated":
        raise DeviceCommandError(f"device {device_id!r} is {device.status}, not isolated")
    restore_login(config, device_id)  # first: a failure here leaves it isolated, retryable
    await store.set_status(device_id, "active", audit=AuditEvent(
        "reinstated", actor, device=device_id, reason=reason or None))
    await bump_generation(store)
