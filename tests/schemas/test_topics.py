"""Topic builders and the strict parser; the enrollment bundle's JSON; zstd with caps."""

from __future__ import annotations

import json
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    Bundle,
    DecodeError,
    DownKind,
    ParsedTopic,
    Reason,
    Topics,
    UpKind,
    ValidationError,
    compress,
    decompress,
    parse_topic,
    valid_id,
)

IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
HEX32 = st.binary(min_size=32, max_size=32).map(bytes.hex)


@settings(max_examples=100, deadline=None)
@given(fed=IDS, dev=IDS, up=st.sampled_from(list(UpKind)), down=st.sampled_from(list(DownKind)),
       sha=st.binary(min_size=32, max_size=32).map(bytes.hex))
def test_every_built_topic_parses_back(fed: str, dev: str, up: UpKind, down: DownKind,
                                       sha: str) -> None:
    t = Topics(fed)
    assert parse_topic(t.up(dev, up)) == ParsedTopic(fed, "up", dev, up.value)
    assert parse_topic(t.down(dev, down)) == ParsedTopic(fed, "down", dev, down.value)
    assert parse_topic(t.model) == ParsedTopic(fed, "model", None, "snapshot")
    assert parse_topic(t.model_delta) == ParsedTopic(fed, "model", None, "delta")
    assert parse_topic(t.chunk(sha)) == ParsedTopic(fed, "model", None, "chunk")
    assert parse_topic(t.fleet) == ParsedTopic(fed, "fleet")
    assert parse_topic(t.ops_request) == ParsedTopic(fed, "ops", None, "request")
    assert parse_topic(t.ops_reply(dev)) == ParsedTopic(fed, "ops", dev, "reply")


def test_topic_layout_is_the_documented_one() -> None:
    t = Topics("f1")
    assert [t.model, t.model_delta, t.model_all, t.chunk("ab"), t.down("d", DownKind.TASK),
            t.down_all("d"), t.up("d", UpKind.UPDATES), t.up_all, t.fleet, t.ops_request,
            t.ops_reply("op")] == [
        "fl/f1/model", "fl/f1/model/delta", "fl/f1/model/#", "fl/f1/model/chunks/ab",
        "fl/f1/down/d/task", "fl/f1/down/d/#", "fl/f1/up/d/updates", "fl/f1/up/+/+",
        "fl/f1/fleet", "fl/f1/ops/request", "fl/f1/ops/reply/op"]


@pytest.mark.parametrize(
    "topic",
    ["", "fl", "fl/f", "xx/f/model", "fl/+/model", "fl/f/model/#", "fl/f/up/d/#",
     "fl/f/up/+/status", "fl/f/up/d/task", "fl/f/down/d/status", "fl/f/up/d/status/x",
     "fl/f/up/d\n/status", "fl/f\n/model", "fl/f/model/chunks/" + "a" * 63,
     "fl/f/model/chunks/" + "A" * 64, "fl/f/model/chunks/" + "a" * 64 + "\n", "fl/f/fleet/x",
     "fl/f/ops/reply", "fl/f/ops/reply/a/b", "fl/f/model/delta/x", "/fl/f/model",
     "fl/" + "a" * 65 + "/model"],
)
def test_anything_else_is_bad_topic(topic: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_topic(topic)
    assert info.value.reason is Reason.BAD_TOPIC


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80) | st.lists(st.sampled_from(
    ["fl", "f", "up", "down", "model", "d", "status", "#", "+", "", "chunks", "ops"]),
    max_size=6).map("/".join))
def test_parse_topic_raises_only_bad_topic(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except DecodeError as exc:
        assert exc.reason is Reason.BAD_TOPIC
    else:
        assert valid_id(parsed.fed) and (parsed.device is None or valid_id(parsed.device))


def test_ids_refuse_wildcards_slashes_and_a_trailing_newline() -> None:
    for bad in ("", "a/b", "+", "#", "a+", "-a", "a\n", "a b", "é", "a" * 65):
        assert not valid_id(bad), bad
        with pytest.raises(ValueError):
            Topics(bad)
        with pytest.raises(ValueError):
            Topics("f").up(bad, UpKind.STATUS)
    assert valid_id("dev-01_a.b") and valid_id("a" * 64)


# -- bundle -----------------------------------------------------------------------------------


def _bundle(**kw: Any) -> Bundle:
    fields: dict[str, Any] = {
        "device_id": "dev-a", "fed": "f", "broker_host": "127.0.0.1", "broker_port": 1883,
        "mqtt_username": "dev-a", "mqtt_password": "pw", "orchestrator_key": "ab" * 32,
        "enroll_secret": "cd" * 32}
    fields.update(kw)
    return Bundle(**fields)


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


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)


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


# -- compression ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=5000) | st.binary(max_size=20).map(lambda b: b * 300),
       st.integers(1, 9))
def test_compress_round_trips_and_the_cap_is_exact(data: bytes, level: int) -> None:
    frame = compress(data, level)
    assert decompress(frame, len(data)) == data
    if data:
        with pytest.raises(DecodeError) as info:
            decompress(frame, len(data) - 1)
        assert info.value.reason is Reason.DECOMPRESSED_TOO_LARGE


def test_streamed_frames_are_decompressed_up_to_the_cap() -> None:
    data = b"fedmq " * 10_000
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert decompress(frame, len(data)) == data
    with pytest.raises(DecodeError) as info:
        decompress(frame, len(data) - 1)
    assert info.value.reason is Reason.DECOMPRESSED_TOO_LARGE


@pytest.mark.parametrize(
    "frame",
    [b"", b"\x28\xb5\x2f", b"PK\x03\x04 not zstd", b"\x28\xb5\x2f\xfd", compress(b"x" * 100)[:-4],
     compress(b"abc")[:6] + b"\xff" * 8],
    ids=["empty", "short-magic", "other-format", "magic-only", "truncated", "garbage-blocks"],
)
def test_bad_frames_are_bad_compression(frame: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decompress(frame, 1 << 20)
    assert info.value.reason is Reason.BAD_COMPRESSION
