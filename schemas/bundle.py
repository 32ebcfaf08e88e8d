"""The enrollment bundle: everything a device needs for its first boot, as one JSON document.

Written by ``fedmq device add`` (mode 0600) and read by ``fedmq agent run --bundle``. With
TLS it carries the CA certificate itself (PEM), and with a broker that requires client
certificates also the device's own certificate and private key (PEM), so the file alone is
enough to connect: it is a secret.
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
    """Legacy (older bundles): a path to the CA file on the device. New bundles embed
    ``ca_pem`` instead and leave this empty."""
    role: str = "device"
    format: int = BUNDLE_FORMAT
    ca_pem: str = ""
    """The CA certificate(s) that signed the broker's certificate (PEM)."""
    client_cert_pem: str = ""
    """The device's client certificate (PEM; CN = ``mqtt_username``), for a broker that
    requires one; empty otherwise."""
    client_key_pem: str = ""
    """The private key of ``client_cert_pem`` (PEM)."""
    n_features: int = 0
    """The federation's model takes samples of this many features (0: not said)."""
    n_classes: int = 0
    """Its labels are classes 0..n_classes-1 (0: it takes no labels, or not said)."""

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
        if self.n_features < 0 or self.n_classes < 0:
            raise ValueError("n_features and n_classes must be >= 0")
        if self.role not in ("device", "operator"):
            raise ValueError(f"role must be device or operator, not {self.role!r}")
        self._check_tls()

    def _check_tls(self) -> None:
        if self.ca_pem and _CERT_BEGIN not in self.ca_pem:
            raise ValueError("ca_pem must hold a PEM certificate")
        if bool(self.client_cert_pem) != bool(self.client_key_pem):
            raise ValueError("client_cert_pem and client_key_pem go together")
        if self.client_cert_pem:
            if not self.tls:
                raise ValueError("a client certificate needs tls = true")
            if _CERT_BEGIN not in self.client_cert_pem:
                raise ValueError("client_cert_pem must hold a PEM certificate")
            if "PRIVATE KEY-----" not in self.client_key_pem:
                raise ValueError("client_key_pem must hold a PEM private key")

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
    "ca_file": str, "role": str, "format": int, "ca_pem": str, "client_cert_pem": str,
    "client_key_pem": str, "n_features": int, "n_classes": int,
}
_CERT_BEGIN = "-----BEGIN CERTIFICATE-----"
