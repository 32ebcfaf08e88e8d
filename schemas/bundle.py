"""The enrollment bundle: everything a device needs for its first boot, as one JSON document.

Written by ``fedmq device add`` (mode 0600) and read by ``fedmq agent run --bundle``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from .errors import Reason, ValidationError
from .signing import ENROLL_SECRET_BYTES
from .topics import check_id

BUNDLE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Bundle:
    device_id: str
    fed: str
    broker_host: str
    broker_port: int
    mqtt_username: str
    mqtt_password: str
    orchestrator_key: str
    """Hex Ed25519 public key the device pins: downstream messages must verify against it."""
    enroll_secret: str
    """Hex one-time secret; the device MACs its new public key with it."""
    tls: bool = False
    ca_file: str = ""
    role: str = "device"
    format: int = BUNDLE_FORMAT

    def __post_init__(self) -> None:
        # JSON gives any type: "tls": "false" would be truthy, "broker_port": true would be 1
        for name, kind in _FIELD_KINDS.items():
            value = getattr(self, name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"{name} must be of type {kind.__name__}")
        check_id(self.device_id, "device id")
        check_id(self.fed, "federation id")
        if not 0 < self.broker_port < 65536:
            raise ValueError(f"broker_port {self.broker_port} out of range")
        if len(bytes.fromhex(self.orchestrator_key)) != 32:
            raise ValueError("orchestrator_key must be 32 bytes of hex")
        if len(bytes.fromhex(self.enroll_secret)) != ENROLL_SECRET_BYTES:
            raise ValueError("enroll_secret must be 32 bytes of hex")
        if self.role not in ("device", "operator"):
            raise ValueError(f"role must be device or operator, not {self.role!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Bundle:
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"bundle is not JSON ({exc.msg}, line {exc.lineno})") from None
        except RecursionError:
            raise ValidationError("bundle is nested too deeply") from None
        if not isinstance(data, dict):
            raise ValidationError("bundle must be a JSON object")
        if data.get("format") != BUNDLE_FORMAT:
            raise ValidationError(f"unsupported bundle format {data.get('format')!r}",
                                  path="$.format", reason=Reason.UNSUPPORTED_VERSION)
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValidationError(f"bundle fields: {exc}") from None
        except ValueError as exc:
            raise ValidationError(str(exc)) from None


_FIELD_KINDS: dict[str, type] = {
    "device_id": str, "fed": str, "broker_host": str, "broker_port": int, "mqtt_username": str,
    "mqtt_password": str, "orchestrator_key": str, "enroll_secret": str, "tls": bool,
    "ca_file": str, "role": str, "format": int,
}
