"""Rendering the development broker config from ``broker_config/dev.conf.in`` (stdlib only)."""

from __future__ import annotations

import os
import pwd
import socket
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import BrokerError

# The templates live at the top of the source tree, next to this package's parent.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "broker_config"
DEV_TEMPLATE = CONFIG_DIR / "dev.conf.in"
DEFAULT_ACL = CONFIG_DIR / "acl"

DEFAULT_MAX_PACKET_SIZE = 8 * 1024 * 1024
# "information" carries the start-up and reload lines the supervisor waits for.
DEFAULT_LOG_TYPES = ("error", "warning", "notice", "information", "subscribe", "unsubscribe")
_KNOWN_LOG_TYPES = frozenset(
    {"debug", "error", "warning", "notice", "information", "subscribe", "unsubscribe",
     "websockets", "none", "all"}
)
# Placeholders that may hold several config lines; every other value must be one line.
_MULTILINE = frozenset({"log_types", "listener_extra"})


def current_user() -> str:
    """Name of the effective user, for Mosquitto's ``user`` option."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise BrokerError(f"uid {os.geteuid()} has no user name; Mosquitto needs one") from None


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def render_template(template: str, values: Mapping[str, object]) -> str:
    """Fill ``{name}`` placeholders; every placeholder must have a value and vice versa."""
    try:
        names = {field for _, field, _, _ in string.Formatter().parse(template) if field}
    except ValueError as exc:
        raise BrokerError(f"malformed config template: {exc}") from None
    missing = names - values.keys()
    if missing:
        raise BrokerError(f"config template needs values for {sorted(missing)}")
    unused = values.keys() - names
    if unused:
        raise BrokerError(f"config template has no placeholders for {sorted(unused)}")
    for name, value in values.items():
        if name not in _MULTILINE and ("\n" in str(value) or "\r" in str(value)):
            raise BrokerError(f"config value {name!r} must be a single line")
    return template.format_map(values)


def render_dev_config(
    *,
    port: int,
    password_file: Path,
    acl_file: Path,
    persistence_dir: Path,
    log_file: Path,
    pid_file: Path,
    autosave_interval: int = 2,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    log_types: Sequence[str] = DEFAULT_LOG_TYPES,
    listener_extra: str = "",
    template: Path = DEV_TEMPLATE,
    user: str | None = None,
) -> str:
    """The development config text for a loopback listener on ``port``."""
    if not 0 < port < 65536:
        raise BrokerError(f"port {port} out of range")
    if autosave_interval < 1:
        raise BrokerError("autosave_interval must be at least 1 second")
    if not 0 < max_packet_size <= 268_435_455:  # MQTT's largest packet
        raise BrokerError(f"max_packet_size {max_packet_size} out of range")
    unknown = set(log_types) - _KNOWN_LOG_TYPES
    if unknown or not log_types:
        raise BrokerError(f"unknown or empty log types {sorted(unknown)}")
    try:
        text = template.read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerError(f"cannot read broker config template {template}: {exc}") from None
    return render_template(
        text,
        {
            "user": user if user is not None else current_user(),
            "pid_file": pid_file,
            "password_file": password_file,
            "acl_file": acl_file,
            "persistence_dir": persistence_dir,
            "autosave_interval": autosave_interval,
            "max_packet_size": max_packet_size,
            "log_file": log_file,
            "log_types": "\n".join(f"log_type {t}" for t in log_types),
            "port": port,
            "listener_extra": listener_extra.strip(),
        },
    )
