"""Every message type survives pack → verify → decode unchanged, sealed or not; decoding is
strict and names the path of what it refuses."""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from schemas import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Ack,
    AckEntry,
    AckOutcome,
    Codec,
    CodecSpec,
    Control,
    ControlAction,
    DecodeError,
    EncodedTensor,
    EncodeError,
    FleetSummary,
    Message,
    Reason,
    Status,
    Task,
    Update,
    UpdateBatch,
    ValidationError,
    compress,
    decode,
    decode_params,
    message_type,
    pack,
    pack_batch,
    seal_key,
    unpack_batch,
    unseal_key,
    verify,
)
from schemas.annex import SCORE_BINS, FeatureStats, ModelAnnex
from schemas.messages import EvalReport, KeyAnnouncement, ModelDelta, ModelSnapshot, Optimizer
from schemas.secagg.spec import BucketMember, BucketSpec

SENDER_KEY = SigningKey(bytes(range(32)))
RECEIVER_KEY = SigningKey(bytes(range(1, 33)))
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
NON_NEG = st.integers(min_value=0, max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
TEXT = st.text(max_size=12)
IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)

# Free-form ``Any`` values: what msgpack carries back unchanged (lists, never tuples; str keys).
ANY_VALUE: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | INT64 | FLOATS | TEXT | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)

ANNEXES = [ModelAnnex(), ModelAnnex([1.0, -2.0], [0.5, 3.0], 0.25, 4), ModelAnnex(wants_stats=True)]

# Fields whose __post_init__ constrains them; everything else comes from its type hint.
BUCKET = BucketSpec("b-1", [BucketMember("a", b"\x01" * 32), BucketMember("b", b"\x02" * 32)],
                    threshold=2, degree=1, bits=16, scale=100.0, clip_norm=1.0,
                    weight_cap=8.0, weight_unit=10.0, noise_variance=4.0, deadline_ms=5)
OVERRIDES: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (MESSAGE_TYPES["enroll"], "public_key"): st.binary(min_size=32, max_size=32),
    (MESSAGE_TYPES["enroll"], "mac"): st.binary(min_size=32, max_size=32),
    (Update, "num_samples"): st.integers(min_value=1, max_value=2**63 - 1),
    (Update, "base_version"): NON_NEG,
    (Task, "epochs"): st.integers(min_value=1, max_value=1000),
    (Task, "batch_size"): st.integers(min_value=1, max_value=10_000),
    (Task, "lr"): st.floats(min_value=0, max_value=10),
    (Task, "mu"): st.floats(min_value=0, max_value=10),
    (Task, "noise_multiplier"): st.floats(min_value=0, max_value=10),
    (Task, "clip_norm"): st.none() | st.floats(min_value=1e-6, max_value=1e6),
    (Task, "momentum"): st.floats(min_value=0, max_value=1, exclude_max=True),
    (Task, "beta1"): st.floats(min_value=0, max_value=1, exclude_max=True),
    (Task, "beta2"): st.floats(min_value=0, max_value=1, exclude_max=True),
    (Task, "weight_decay"): st.floats(min_value=0, max_value=10),
    (KeyAnnouncement, "new_public_key"): st.binary(min_size=31, max_size=31).map(
        lambda b: b"\x01" + b),
    (KeyAnnouncement, "old_public_key"): st.binary(min_size=31, max_size=31).map(
        lambda b: b"\x02" + b),
    (KeyAnnouncement, "proof"): st.binary(min_size=64, max_size=64),
    (KeyAnnouncement, "not_before_ms"): st.integers(min_value=0, max_value=2**62),
    (KeyAnnouncement, "retire_after_ms"): st.integers(min_value=2**62, max_value=2**63 - 1),
    (KeyAnnouncement, "generation"): st.integers(min_value=1, max_value=2**63 - 1),
    (CodecSpec, "chunk"): st.integers(min_value=0, max_value=2**20),
    (CodecSpec, "topk_fraction"): st.floats(min_value=1e-6, max_value=1.0),
    (Task, "score_noise"): st.floats(min_value=0, max_value=10),
    (Task, "bucket"): st.none() | st.just(BUCKET),
    (BucketSpec, "members"): st.just(BUCKET.members),
    (EvalReport, "score_hist"): st.just([]) | st.lists(FLOATS, min_size=SCORE_BINS,
                                                       max_size=SCORE_BINS),
    (Status, "scored"): st.integers(min_value=0, max_value=2**62),
    (Status, "anomalies"): st.just(0),
    (Status, "feature_stats"): st.none() | st.builds(
        FeatureStats, count=st.integers(min_value=1, max_value=2**40),
        mean=st.lists(FLOATS, min_size=2, max_size=2),
        m2=st.lists(st.floats(min_value=0, max_value=1e6), min_size=2, max_size=2)),
    (ModelSnapshot, "annex"): st.sampled_from(ANNEXES),
    (ModelDelta, "annex"): st.sampled_from(ANNEXES),
}


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for any type used in a message's hints (the same hints the decoder walks)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return ANY_VALUE
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else strategy_for(a)
                           for a in typing.get_args(tp)))
    if origin is list:
        return st.lists(strategy_for(typing.get_args(tp)[0]), max_size=3)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        return st.dictionaries(strategy_for(key_tp), strategy_for(val_tp), max_size=3)
    if dataclasses.is_dataclass(tp):
        return builds(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    simple: dict[type, st.SearchStrategy[Any]] = {
        bool: st.booleans(), int: INT64, float: FLOATS, str: TEXT, bytes: st.binary(max_size=16),
    }
    return simple[tp]


def builds(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: OVERRIDES[cls, f.name] if (cls, f.name) in OVERRIDES
        else strategy_for(hints[f.name])
        for f in dataclasses.fields(cls)
    }
    return st.builds(cls, **kwargs)


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_every_message_type_round_trips(tag: str, sealed: bool) -> None:
    cls = MESSAGE_TYPES[tag]

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(message=builds(cls), fed=IDS, sender=IDS, seq=NON_NEG, ts_ms=NON_NEG)
    def check(message: Message, fed: str, sender: str, seq: int, ts_ms: int) -> None:
        data = pack(message, key=SENDER_KEY, fed=fed, sender=sender, seq=seq, ts_ms=ts_ms,
                    seal_to=seal_key(RECEIVER_KEY.verify_key) if sealed else None)
        opened = verify(data, SENDER_KEY.verify_key)
        assert message_type(opened) is cls
        header, back = decode(data, SENDER_KEY.verify_key, cls,
                              unseal=unseal_key(RECEIVER_KEY) if sealed else None)
        assert back == message
        assert type(back) is cls
        assert (header.v, header.type, header.fed, header.sender, header.seq, header.ts_ms,
                header.enc) == (PROTOCOL_VERSION, tag, fed, sender, seq, ts_ms,
                                "sealed" if sealed else "zstd")

    check()


def test_message_tags_match_their_classes() -> None:
    assert len(set(MESSAGE_TYPES.values())) == len(MESSAGE_TYPES)
    for tag, cls in MESSAGE_TYPES.items():
        assert cls.TYPE == tag


def test_update_default_train_loss_nan_survives() -> None:
    update = Update("t", 0, 5, [])
    _, back = decode(pack(update, key=SENDER_KEY, fed="f", sender="d", seq=1, ts_ms=1),
                     SENDER_KEY.verify_key, Update)
    assert math.isnan(back.train_loss)
    assert dataclasses.replace(back, train_loss=0.0) == dataclasses.replace(update, train_loss=0.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_update_batch_round_trips(entries: list[bytes]) -> None:
    assert unpack_batch(pack_batch(UpdateBatch(entries))) == UpdateBatch(entries)


def test_update_batch_of_real_envelopes_opens_each() -> None:
    envelopes = [
        pack(Update(f"t{i}", 3, 10 + i, []), key=SENDER_KEY, fed="f", sender="d", seq=i,
             ts_ms=1000 + i)
        for i in range(5)
    ]
    batch = unpack_batch(pack_batch(UpdateBatch(envelopes)))
    seqs = [decode(e, SENDER_KEY.verify_key, Update)[0].seq for e in batch.entries]
    assert seqs == [0, 1, 2, 3, 4]


# -- strictness, evolution and error paths ----------------------------------------------------


def _signed_with_body(fields: dict[str, Any], tag: str) -> bytes:
    """A correctly signed envelope around an arbitrary body map (a sender that lies)."""
    signed = msgpack.packb(
        {"v": PROTOCOL_VERSION, "type": tag, "fed": "f", "sender": "d", "seq": 1, "ts_ms": 1,
         "enc": "zstd", "body": compress(msgpack.packb(fields, use_bin_type=True))},
        use_bin_type=True,
    )
    return msgpack.packb([signed, SENDER_KEY.sign(signed).signature], use_bin_type=True)


def _update_fields(**changes: Any) -> dict[str, Any]:
    tensor = {"name": "w", "shape": [2], "codec": "float32", "data": bytes(8)}
    fields: dict[str, Any] = {"task_id": "t", "base_version": 1, "num_samples": 4,
                              "tensors": [tensor, dict(tensor, name="b")]}
    fields.update(changes)
    return fields


def test_unknown_fields_are_ignored_for_schema_evolution() -> None:
    data = _signed_with_body(_update_fields(added_in_v1_5="x", another=[1, 2]), "update")
    _, update = decode(data, SENDER_KEY.verify_key, Update)
    assert update.task_id == "t" and update.codec is Codec.INT8  # absent → default


def test_missing_required_field_is_named() -> None:
    fields = _update_fields()
    del fields["num_samples"]
    with pytest.raises(ValidationError, match="missing field 'num_samples'") as info:
        decode(_signed_with_body(fields, "update"), SENDER_KEY.verify_key, Update)
    assert info.value.path == "$" and info.value.reason is Reason.INVALID_FIELD
    assert (info.value.sender, info.value.seq) == ("d", 1)


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"base_version": "1"}, "$.base_version"),
        ({"num_samples": True}, "$.num_samples"),
        ({"num_samples": 2**64 - 1}, "$.num_samples"),  # uint64: outside every int64 column
        ({"train_loss": "nan"}, "$.train_loss"),
        ({"codec": "zip"}, "$.codec"),
        ({"clip_norm": [1.0]}, "$.clip_norm"),
    ],
)
def test_wrong_field_types_name_their_path(changes: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as info:
        decode(_signed_with_body(_update_fields(**changes), "update"), SENDER_KEY.verify_key,
               Update)
    assert info.value.path == path
    assert f"at {path}" in str(info.value)


def test_nested_tensor_errors_name_their_path() -> None:
    fields = _update_fields()
    fields["tensors"][1]["codec"] = "bogus"
    with pytest.raises(ValidationError, match=r"at \$\.tensors\[1\]\.codec"):
        decode(_signed_with_body(fields, "update"), SENDER_KEY.verify_key, Update)
    fields = _update_fields()
    fields["tensors"][0]["shape"] = [2, "x"]
    with pytest.raises(ValidationError, match=r"at \$\.tensors\[0\]\.shape\[1\]"):
        decode(_signed_with_body(fields, "update"), SENDER_KEY.verify_key, Update)


def test_bad_tensor_shape_is_named_when_decoding_params() -> None:
    _, update = decode(_signed_with_body(_update_fields(), "update"), SENDER_KEY.verify_key,
                       Update)
    bad = [dataclasses.replace(update.tensors[0], shape=[3]), update.tensors[1]]
    with pytest.raises(ValidationError, match=r"at \$\.tensors\[0\]\.data") as info:
        decode_params(bad)
    assert info.value.reason is Reason.BAD_SHAPE
    bad = [dataclasses.replace(update.tensors[0], shape=[2**40]), update.tensors[1]]
    with pytest.raises(ValidationError, match=r"at \$\.tensors\[0\]\.shape$") as info:
        decode_params(bad)
    assert info.value.reason is Reason.TOO_LARGE
    bad = [update.tensors[0], dataclasses.replace(update.tensors[1], shape=[-1])]
    with pytest.raises(ValidationError, match=r"at \$\.tensors\[1\]\.shape$"):
        decode_params(bad)


def test_post_init_violations_become_validation_errors() -> None:
    fields = {"task_id": "t", "model_version": 1, "epochs": 0}
    with pytest.raises(ValidationError, match="epochs and batch_size must be positive"):
        decode(_signed_with_body(fields, "task"), SENDER_KEY.verify_key, Task)
    fields = {"task_id": "t", "model_version": 1, "codec": {"codec": "topk",
                                                            "topk_fraction": 2.0}}
    with pytest.raises(ValidationError, match=r"at \$\.codec$"):
        decode(_signed_with_body(fields, "task"), SENDER_KEY.verify_key, Task)


def test_a_task_from_an_older_orchestrator_asks_for_plain_sgd() -> None:
    _, task = decode(_signed_with_body({"task_id": "t", "model_version": 1}, "task"),
                     SENDER_KEY.verify_key, Task)
    assert task.optimizer is Optimizer.SGD and task.weight_decay == 0.0
    # and an older agent's update says nothing: it trained with plain SGD
    _, update = decode(_signed_with_body(_update_fields(), "update"), SENDER_KEY.verify_key,
                       Update)
    assert update.optimizer is Optimizer.SGD


def test_a_tasks_optimizer_settings_are_checked() -> None:
    _, task = decode(_signed_with_body({"task_id": "t", "model_version": 1, "optimizer": "adam",
                                        "beta2": 0.99, "weight_decay": 0.01}, "task"),
                     SENDER_KEY.verify_key, Task)
    assert (task.optimizer, task.beta2, task.weight_decay) == (Optimizer.ADAM, 0.99, 0.01)
    for bad in ({"optimizer": "lion"}, {"momentum": 1.0}, {"beta1": -0.5},
                {"weight_decay": -1.0}, {"weight_decay": float("inf")}):
        with pytest.raises(ValidationError):
            decode(_signed_with_body({"task_id": "t", "model_version": 1, **bad}, "task"),
                   SENDER_KEY.verify_key, Task)


def test_wrong_type_is_refused_before_the_body_is_read() -> None:
    data = pack(Status(), key=SENDER_KEY, fed="f", sender="d", seq=1, ts_ms=1)
    with pytest.raises(DecodeError) as info:
        decode(data, SENDER_KEY.verify_key, Update)
    assert info.value.reason is Reason.WRONG_TYPE


def test_unknown_type_tag_is_refused() -> None:
    signed = msgpack.packb({"v": 1, "type": "gossip", "fed": "f", "sender": "d", "seq": 0,
                            "ts_ms": 0, "body": b""})
    data = msgpack.packb([signed, SENDER_KEY.sign(signed).signature])
    with pytest.raises(DecodeError) as info:
        message_type(verify(data, SENDER_KEY.verify_key))
    assert info.value.reason is Reason.WRONG_TYPE


@pytest.mark.parametrize(
    "message",
    [
        Control(ControlAction.RECONFIGURE, params={"by_label": {3: 1}}),  # int map key
        FleetSummary(1, {"x": object()}, []),
        Ack([AckEntry(2**64, AckOutcome.ACCEPTED)]),  # beyond msgpack's integers
    ],
    ids=["int-key", "object", "huge-int"],
)
def test_unencodable_messages_fail_at_the_sender(message: Message) -> None:
    with pytest.raises(EncodeError) as info:
        pack(message, key=SENDER_KEY, fed="f", sender="d", seq=1, ts_ms=1)
    assert info.value.reason is Reason.MALFORMED


def test_encoded_tensor_in_update_round_trips_with_bytes_intact() -> None:
    tensor = EncodedTensor("w", [2, 0], Codec.TOPK, b"", b"\x00\x00\x80?", 0, b"")
    update = Update("t", 0, 1, [tensor], codec=Codec.TOPK)
    _, back = decode(pack(update, key=SENDER_KEY, fed="f", sender="d", seq=9, ts_ms=9),
                     SENDER_KEY.verify_key, Update)
    assert back.tensors == [tensor]
