"""Enrollment: the pure decision on an ``enroll`` message, and the operator's device commands.

``judge_enroll`` decides what an enroll request does given the registry row (no I/O).
``provision``, ``approve`` and ``revoke`` are what ``fedmq device add|approve|revoke`` do to the
store and the broker's password file; they work on the database directly, next to a running
service, which notices through the registry generation (see :mod:`orchestrator.devices.registry`).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from orchestrator.broker import BrokerError, PasswordFile, generate_password, read_pid_file
from orchestrator.broker import reload_broker as _sighup
from orchestrator.config import Config
from orchestrator.devices.registry import DeviceView, bump_generation
from orchestrator.store import AuditEvent, Device, Role, Store
from schemas.bundle import Bundle
from schemas.errors import Reason
from schemas.messages import Enroll, EnrollStatus
from schemas.signing import ENROLL_SECRET_BYTES, check_enroll_mac

__all__ = [
    "DeviceCommandError",
    "EnrollDecision",
    "approve",
    "judge_enroll",
    "provision",
    "reload_broker",
    "revoke",
    "write_private",
]


class DeviceCommandError(Exception):
    """An operator command cannot be carried out; the message is one line."""


@dataclass(frozen=True, slots=True)
class EnrollDecision:
    status: EnrollStatus
    reason: str = ""
    register: bool = False
    """True: store the key with ``new_status`` (a first enrollment)."""
    new_status: str = ""


def judge_enroll(
    device: DeviceView | None, enroll: Enroll, *, fed: str, manual_approval: bool
) -> EnrollDecision:
    """What to answer to an authentic (self-signed) enroll from ``enroll.device_id``."""
    if device is None:
        return EnrollDecision(EnrollStatus.REJECTED, Reason.UNKNOWN_SENDER.value)
    if device.status == "revoked":
        return EnrollDecision(EnrollStatus.REJECTED, Reason.REVOKED.value)
    if device.status == "isolated":
        return EnrollDecision(EnrollStatus.REJECTED, Reason.ISOLATED.value)
    if device.status == "pending":
        if device.secret is None or not check_enroll_mac(
            device.secret, enroll.mac, fed=fed, device_id=enroll.device_id,
            public_key=enroll.public_key,
        ):
            return EnrollDecision(EnrollStatus.REJECTED, Reason.BAD_HMAC.value)
        if manual_approval:
            return EnrollDecision(EnrollStatus.AWAITING_APPROVAL, register=True,
                                  new_status="awaiting_approval")
        return EnrollDecision(EnrollStatus.ACTIVE, register=True, new_status="active")
    # enrolled before: the same key is answered again (idempotent), another key is refused
    if device.public_key != enroll.public_key:
        return EnrollDecision(EnrollStatus.REJECTED, Reason.NOT_AUTHORIZED.value)
    if device.status == "awaiting_approval":
        return EnrollDecision(EnrollStatus.AWAITING_APPROVAL)
    return EnrollDecision(EnrollStatus.ACTIVE)


# -- operator commands -----------------------------------------------------------------------


def reload_broker(config: Config) -> bool:
    """SIGHUP the broker if its pid file names a running process; False if none runs."""
    pid_file = config.broker_pid_file
    if pid_file is None or not pid_file.exists():
        return False
    try:
        _sighup(read_pid_file(pid_file))
    except BrokerError:
        return False  # a stale pid file: the broker reads the password file when it starts
    return True


def _password_file(config: Config) -> PasswordFile | None:
    path = config.password_file
    if path is None:
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return PasswordFile(path)


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
        enroll_secret=secret.hex(), tls=broker.tls,
        ca_file=str(broker.ca_file) if broker.ca_file else "", role=role,
    )


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
                 reason: str = "") -> Device:
    """Disable the device's key and remove its broker credential (then reload the broker)."""
    device = await _existing(store, device_id)
    if device.status == "revoked":
        raise DeviceCommandError(f"device {device_id!r} is already revoked")
    await store.set_status(device_id, "revoked", audit=AuditEvent(
        "revoked", actor, device=device_id, reason=reason or None))
    passwords = _password_file(config)
    if passwords is not None and passwords.exists():
        passwords.remove(device_id)
        reload_broker(config)
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
