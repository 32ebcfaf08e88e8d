"""The enrollment bundle's JSON: round trips, and a ValidationError for anything else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Bundle, Reason, ValidationError

IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
HEX32 = st.binary(min_size=32, max_size=32).map(bytes.hex)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)

_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
_KEY = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n"


def _bundle(**kw: Any) -> Bundle:
    fields: dict[str, Any] = {
        "device_id": "dev-a", "fed": "f", "broker_host": "127.0.0.1", "broker_port": 1883,
        "mqtt_username": "dev-a", "mqtt_password": "pw", "orchestrator_key": "ab" * 32,
        "enroll_secret": "cd" * 32}
    fields.update(kw)
    return Bundle(**fields)


def test_tls_material_round_trips() -> None:
    bundle = _bundle(tls=True, ca_pem=_CERT, client_cert_pem=_CERT, client_key_pem=_KEY)
    assert Bundle.from_json(bundle.to_json()) == bundle


@settings(max_examples=60, deadline=None)
@given(device_id=IDS, fed=IDS, port=st.integers(1, 65535), password=st.text(max_size=30),
       key=HEX32, secret=HEX32, tls=st.booleans(), role=st.sampled_from(["device", "operator"]))
def test_bundle_json_round_trips(device_id: str, fed: str, port: int, password: str, key: str,
                                 secret: str, tls: bool, role: str) -> None:
    bundle = _bundle(device_id=device_id, fed=fed, broker_port=port, mqtt_password=password,
                     orchestrator_key=key, enroll_secret=secret, tls=tls, role=role)
    text = bundle.to_json()
    assert Bundle.from_json(text) == bundle
    assert json.loads(text)["format"] == 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"tls": "false"}, "tls must be of type bool"),  # a truthy string must not enable TLS
        ({"broker_port": True}, "broker_port must be of type int"),
        ({"broker_port": "1883"}, "broker_port must be of type int"),
        ({"broker_port": 0}, "out of range"),
        ({"device_id": "a/b"}, "invalid device id"),
        ({"orchestrator_key": "ab" * 31}, "orchestrator_key must be 32 bytes"),
        ({"enroll_secret": "zz" * 32}, "non-hexadecimal"),
        ({"role": "admin"}, "role must be device or operator"),
        ({"mqtt_password": None}, "mqtt_password must be of type str"),
        ({"surprise": 1}, "unexpected keyword argument 'surprise'"),
        ({"ca_pem": "/etc/ca.crt"}, "ca_pem must hold a PEM certificate"),
        ({"tls": True, "client_cert_pem": _CERT}, "go together"),
        ({"client_cert_pem": _CERT, "client_key_pem": _KEY}, "needs tls = true"),
        ({"tls": True, "client_cert_pem": _KEY, "client_key_pem": _KEY},
         "client_cert_pem must hold a PEM certificate"),
        ({"tls": True, "client_cert_pem": _CERT, "client_key_pem": _CERT},
         "client_key_pem must hold a PEM private key"),
    ],
)
def test_bad_bundles_are_validation_errors(change: dict[str, Any], match: str) -> None:
    data = json.loads(_bundle().to_json())
    data.update(change)
    with pytest.raises(ValidationError, match=match):
        Bundle.from_json(json.dumps(data))


@pytest.mark.parametrize(
    ("text", "reason"),
    [("", Reason.INVALID_FIELD), ("[1]", Reason.INVALID_FIELD), ("{", Reason.INVALID_FIELD),
     ("[" * 100_000 + "]" * 100_000, Reason.INVALID_FIELD),
     ('{"format": 2}', Reason.UNSUPPORTED_VERSION), ("{}", Reason.UNSUPPORTED_VERSION)],
    ids=["empty", "array", "truncated", "deep", "format-2", "no-format"],
)
def test_unreadable_bundles_are_validation_errors(text: str, reason: Reason) -> None:
    with pytest.raises(ValidationError) as info:
        Bundle.from_json(text)
    assert info.value.reason is reason


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_hostile_bundles_raise_only_validation_error(data: st.DataObject) -> None:
    fields = json.loads(_bundle().to_json())
    for name in data.draw(st.lists(st.sampled_from(sorted(fields)), max_size=4)):
        if name == "format":
            continue
        fields[name] = data.draw(_JSON)
    text = data.draw(st.sampled_from([json.dumps(fields), json.dumps(fields)[:-3]])
                     | st.text(max_size=40))
    try:
        Bundle.from_json(text)
    except ValidationError:
        pass
