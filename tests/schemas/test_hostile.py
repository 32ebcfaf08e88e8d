"""Hostile bytes reach every decoder: they raise only fedmq's typed errors, and nothing is
allocated beyond the caps (huge shapes, huge msgpack headers, zstd bombs)."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from schemas import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Ack,
    AckEntry,
    AckOutcome,
    Chunk,
    ChunkManifest,
    Codec,
    CodecSpec,
    Control,
    ControlAction,
    DecodeError,
    Defer,
    EncodedTensor,
    Enroll,
    Enrolled,
    EnrollStatus,
    EvalReport,
    FedmqError,
    FleetSummary,
    KeyRotation,
    Limits,
    Message,
    ModelDelta,
    ModelSnapshot,
    OperatorRequest,
    OperatorResponse,
    PasswordReceipt,
    Reason,
    ReplayWindow,
    Status,
    Task,
    Update,
    ValidationError,
    compress,
    decode,
    decode_body,
    decode_params,
    decode_tensor,
    decompress,
    encode_params,
    enroll_mac,
    message_type,
    open_enroll,
    pack,
    split,
    unpack_batch,
    verify,
)
from schemas._convert import to_wire
from schemas.messages import KeyAnnouncement
from schemas.secagg.spec import BucketMember, BucketSpec
from schemas.secagg.wire import (
    RevealedShare,
    SecAggEnd,
    SecAggInput,
    SecAggKeys,
    SecAggRelay,
    SecAggReveal,
    SecAggUnmask,
)

KEY = SigningKey(b"\x11" * 32)
MiB = 1 << 20
GiB = 1 << 30
_RNG = np.random.default_rng(0)
_TENSORS = (
    encode_params({"w": np.ones((2, 3), np.float32)}, CodecSpec(Codec.FLOAT32), _RNG)
    + encode_params({"v": np.arange(5, dtype=np.float32)}, CodecSpec(Codec.INT8, chunk=2), _RNG)
    + encode_params({"u": np.arange(9, dtype=np.float32)}, CodecSpec(Codec.TOPK, 0, 0.3), _RNG)
)
SAMPLES: dict[str, Message] = {m.TYPE: m for m in (
    Enroll("dev-a", bytes(KEY.verify_key),
           enroll_mac(b"s" * 32, fed="f", device_id="dev-a", public_key=bytes(KEY.verify_key)),
           "0.1", {"os": "linux", "ram_mb": 512}),
    KeyRotation(b"\x01" * 32, b"\x02" * 64),
    PasswordReceipt(b"\x05" * 32),
    KeyAnnouncement(b"\x01" * 32, b"\x03" * 32, b"\x02" * 64, 10, 20, 2),
    Status(battery_pct=50.0, model_version=3, label_counts={"a": 3, "b": 4}),
    Update("t", 1, 10, list(_TENSORS), clip_norm=1.0, train_loss=0.5),
    EvalReport("t", 3, 10, 0.5, 0.9),
    Enrolled("dev-a", EnrollStatus.ACTIVE),
    Task("t", 3, codec=CodecSpec(Codec.TOPK, 0, 0.1), clip_norm=1.0, bucket=BucketSpec(
        "b-1", [BucketMember("a", b"\x01" * 32), BucketMember("b", b"\x02" * 32)], 2, 1, 16,
        100.0, 1.0, 8.0, 10.0)),
    Defer(1000, "busy"),
    Ack([AckEntry(1, AckOutcome.ACCEPTED), AckEntry(2, AckOutcome.REJECTED, "stale")]),
    Control(ControlAction.RECONFIGURE, params={"k": [1, 2.5, "x"]}),
    ModelSnapshot(3, list(_TENSORS), b"\x03" * 32, {"train_step": b"onnx"}, parent=2),
    ModelDelta(3, 2, list(_TENSORS), b"\x04" * 32),
    ChunkManifest("model", 3, 100, b"\x05" * 32, [b"\x06" * 32, b"\x07" * 32]),
    Chunk(b"\x06" * 32, b"data"),
    FleetSummary(1, {"version": 3}, [{"id": "a", "battery": 40.0}]),
    OperatorRequest("r1", "status", {"device": "a"}),
    OperatorResponse("r1", True, {"x": [1, 2]}),
    SecAggKeys("b-1", b"\x01" * 32, {"a": b"sealed", "b": b"sealed"}),
    SecAggRelay("b-1", {"a": b"\x01" * 32}, {"a": b"sealed"}),
    SecAggInput("b-1", "t", 10, 1.0, 3, b"\x00\x01" * 3),
    SecAggUnmask("b-1", 1, ["a", "b"], []),
    SecAggReveal("b-1", 1, [RevealedShare("a", "self_mask", b"\x00" * 70)]),
    SecAggEnd("b-1", "done"),
)}
TYPES = sorted(MESSAGE_TYPES)

HOSTILE_SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
                   | st.text(max_size=12) | st.binary(max_size=40))
HOSTILE: st.SearchStrategy[Any] = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8) | st.binary(max_size=4) | st.integers(-5, 5), inner, max_size=4),
    max_leaves=10,
)
FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _envelope(fields: dict[Any, Any], key: SigningKey = KEY) -> bytes:
    signed = msgpack.packb(fields, use_bin_type=True)
    out: bytes = msgpack.packb([signed, key.sign(signed).signature], use_bin_type=True)
    return out


def _header(tag: str, body: bytes, **changes: Any) -> dict[str, Any]:
    fields = {"v": PROTOCOL_VERSION, "type": tag, "fed": "f", "sender": "dev-a", "seq": 1,
              "ts_ms": 1, "enc": "zstd", "body": body}
    fields.update(changes)
    return fields


def _decode_fully(data: bytes, cls: type[Message]) -> None:
    """Everything a receiver does with a payload: verify, decode, and decode any tensors."""
    if cls is Enroll:
        open_enroll(data)
    _, message = decode(data, KEY.verify_key, cls)
    if isinstance(message, Update):
        decode_params(message.tensors)
    elif isinstance(message, ModelSnapshot):
        decode_params(message.params, path="$.params")
    elif isinstance(message, ModelDelta):
        decode_params(message.xor, path="$.xor")


def test_every_message_type_has_a_sample() -> None:
    assert sorted(SAMPLES) == TYPES
    for tag, sample in SAMPLES.items():
        _decode_fully(pack(sample, key=KEY, fed="f", sender="dev-a", seq=1, ts_ms=1),
                      MESSAGE_TYPES[tag])


# -- random and mutated bytes -----------------------------------------------------------------


DECODERS: dict[str, Callable[[bytes], object]] = {
    "split": split,
    "verify": lambda b: verify(b, KEY.verify_key),
    "open_enroll": open_enroll,
    "unpack_batch": unpack_batch,
    "replay_window": ReplayWindow.from_bytes,
    "decompress": lambda b: decompress(b, MiB),
    **{f"decode-{tag}": (lambda b, c=MESSAGE_TYPES[tag]: decode(b, KEY.verify_key, c))
       for tag in TYPES},
}


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_random_bytes_raise_only_typed_errors(name: str) -> None:
    decoder = DECODERS[name]

    @FAST
    @given(st.binary(max_size=300) | st.binary(max_size=40).map(lambda b: b"\x92\xc4" + b)
           | st.binary(max_size=40).map(lambda b: b"\x28\xb5\x2f\xfd" + b))
    def check(data: bytes) -> None:
        try:
            decoder(data)
        except FedmqError:
            pass

    check()


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if kind == "extend":
        return data + draw(st.binary(min_size=1, max_size=20))
    i = draw(st.integers(0, len(data) - 1))
    j = draw(st.integers(i, min(len(data), i + 16)))
    replacement = draw(st.binary(max_size=16))
    if data[i:j] == replacement:
        replacement += b"\x00"
    return data[:i] + replacement + data[j:]


@pytest.mark.parametrize("tag", TYPES)
def test_mutated_envelopes_are_always_refused(tag: str) -> None:
    cls = MESSAGE_TYPES[tag]
    envelope = pack(SAMPLES[tag], key=KEY, fed="f", sender="dev-a", seq=1, ts_ms=1)

    @FAST
    @given(mutations(envelope))
    def check(data: bytes) -> None:
        assume(data != envelope)  # two flips of the same bits cancel out
        with pytest.raises(FedmqError):
            decode(data, KEY.verify_key, cls)
        if cls is Enroll:
            with pytest.raises(FedmqError):
                open_enroll(data)

    check()


# -- msgpack-valid, correctly signed, but wrong inside (a sender holding a key) ---------------


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_structure(draw: st.DrawFn, wire: Any) -> Any:
    """Replace, delete or add values anywhere in a decoded message's structure."""
    wire = copy.deepcopy(wire)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(wire)))
        if not path:
            wire = draw(HOSTILE)
            continue
        parent = wire
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(HOSTILE)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(HOSTILE)
        else:
            parent.append(draw(HOSTILE))
    return wire


@pytest.mark.parametrize("tag", TYPES)
def test_signed_bodies_with_wrong_structure_raise_only_typed_errors(tag: str) -> None:
    cls = MESSAGE_TYPES[tag]

    @FAST
    @given(mutated_structure(to_wire(SAMPLES[tag])))
    def check(body: Any) -> None:
        data = _envelope(_header(tag, compress(msgpack.packb(body, use_bin_type=True))))
        try:
            _decode_fully(data, cls)
        except FedmqError:
            pass

    check()


@FAST
@given(header=mutated_structure(_header("status", compress(msgpack.packb({})))))
def test_signed_headers_with_wrong_structure_raise_only_typed_errors(header: Any) -> None:
    data = _envelope(header)
    try:
        opened = verify(data, KEY.verify_key)
        decode_body(opened, message_type(opened))
    except FedmqError:
        pass


@FAST
@given(signed=HOSTILE, body=st.binary(max_size=60))
def test_signed_garbage_raises_only_typed_errors(signed: Any, body: bytes) -> None:
    for fields in (signed, _header("update", body)):
        data = msgpack.packb(fields, use_bin_type=True)
        envelope = msgpack.packb([data, KEY.sign(data).signature], use_bin_type=True)
        try:
            _decode_fully(envelope, Update)
        except FedmqError:
            pass


def test_wrong_structures_name_the_problem() -> None:
    cases: list[tuple[bytes, Reason]] = [
        (msgpack.packb([b"x", b"y" * 64, b"z"]), Reason.MALFORMED),
        (msgpack.packb([b"x", b"y" * 63]), Reason.MALFORMED),
        (msgpack.packb({"a": 1}), Reason.MALFORMED),
        (_envelope(_header("status", b"", v=2)), Reason.UNSUPPORTED_VERSION),
        (_envelope(_header("status", b"", v=True)), Reason.INVALID_FIELD),
        (_envelope(_header("status", "text")), Reason.INVALID_FIELD),
        (_envelope(_header("status", b"", seq=-1)), Reason.INVALID_FIELD),
        (_envelope(_header("status", b"", seq=2**64 - 1)), Reason.INVALID_FIELD),
        (_envelope(_header("status", b"", sender="")), Reason.INVALID_FIELD),
        (_envelope(_header("status", compress(b"\x93\x01\x02\x03"))), Reason.MALFORMED),
        (_envelope(_header("status", compress(b""), enc="gzip")), Reason.MALFORMED),
        (_envelope(_header("status", b"not zstd")), Reason.BAD_COMPRESSION),
    ]
    for data, reason in cases:
        with pytest.raises(FedmqError) as info:
            opened = verify(data, KEY.verify_key)
            decode_body(opened, Status)
        assert info.value.reason is reason, (data, info.value)


# -- tensors with hostile shapes, lengths and indices -----------------------------------------


@st.composite
def hostile_tensors(draw: st.DrawFn) -> EncodedTensor:
    """Shapes, chunks, lengths and indices from the edges; half the time the byte lengths are
    exactly what the codec expects, so the checks behind the length checks are reached too."""
    edges = st.sampled_from([-1, 2**24, 2**40, 2**63 - 1]) | st.integers(-(2**63), 2**63 - 1)
    shape = draw(st.lists(st.integers(0, 5) | edges, max_size=9)
                 | st.sampled_from([[0, 2**40, 2**40], [3, 0, 2**62, 2**62]]))
    n = math.prod(shape) if all(d >= 0 for d in shape) else -1
    if not 0 <= n <= 64:
        n = draw(st.integers(0, 8))
    codec = draw(st.sampled_from(list(Codec)))
    chunk = draw(st.sampled_from([0, 1, 2, 7]) | edges)
    n_chunks = max(1, math.ceil(n / chunk)) if chunk > 0 else 1
    if draw(st.booleans()):  # consistent lengths
        chosen = draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=n, unique=True))
        indices = np.array(sorted(chosen), "<u4").tobytes() if codec is Codec.TOPK else b""
        data = draw(st.binary(min_size=len(chosen), max_size=len(chosen))) \
            if codec is Codec.TOPK else bytes(n * {"float32": 4, "float16": 2}.get(codec, 1))
        scales = draw(st.binary(min_size=4, max_size=4)) * (
            n_chunks if codec is Codec.INT8 else 1)
    else:
        data, scales, indices = (draw(st.binary(max_size=24)) for _ in range(3))
    return EncodedTensor(draw(st.sampled_from(["a", "b"])), shape, codec, data, scales, chunk,
                         indices)


@settings(max_examples=300, deadline=None)
@given(st.lists(hostile_tensors(), max_size=4))
@example([EncodedTensor("a", [0, 437657, 437901, 12031504], Codec.FLOAT32, b"")])
def test_hostile_tensors_raise_only_validation_errors(tensors: list[EncodedTensor]) -> None:
    try:
        params = decode_params(tensors)
    except ValidationError as exc:
        assert exc.path.startswith("$.tensors")
        return
    for t in tensors:
        assert params[t.name].shape == tuple(t.shape)
        assert params[t.name].dtype == np.float32


@settings(max_examples=100, deadline=None)
@given(scale=st.sampled_from([np.inf, -np.inf, np.nan, 3e38]), codec=st.sampled_from(
    [Codec.INT8, Codec.TOPK]), q=st.binary(min_size=3, max_size=3))
def test_non_finite_scales_decode_to_values_for_screening_not_warnings(
        scale: float, codec: Codec, q: bytes) -> None:
    tensor = EncodedTensor("w", [3], codec, q, np.float32([scale]).tobytes(), 0,
                           np.arange(3, dtype="<u4").tobytes() if codec is Codec.TOPK else b"")
    assert decode_tensor(tensor).shape == (3,)


# -- nothing is allocated beyond the caps -----------------------------------------------------


class Measured:
    peak = 0
    seconds = 0.0
    error: FedmqError | None = None


@contextlib.contextmanager
def measured() -> Iterator[Measured]:
    """Peak Python-allocated memory and wall time of the block; a FedmqError is captured."""
    result = Measured()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield result
    except FedmqError as exc:
        result.error = exc
    finally:
        result.seconds = time.perf_counter() - start
        result.peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """1 GiB of zeros as one zstd frame that declares its size and one that does not."""
    zeros = bytes(4 * MiB)
    out = {}
    for name, size in (("declared", GiB), ("streamed", -1)):
        buf = io.BytesIO()
        compressor = zstandard.ZstdCompressor(level=1, write_content_size=size > 0)
        with compressor.stream_writer(buf, size=size, closefd=False) as writer:
            for _ in range(GiB // len(zeros)):
                writer.write(zeros)
        out[name] = buf.getvalue()
    assert zstandard.get_frame_parameters(out["declared"]).content_size == GiB
    assert (zstandard.get_frame_parameters(out["streamed"]).content_size
            == zstandard.CONTENTSIZE_UNKNOWN)
    return out


@pytest.mark.parametrize("kind", ["declared", "streamed"])
def test_a_1_gib_zstd_bomb_is_refused_quickly_within_the_cap(kind: str,
                                                             bombs: dict[str, bytes]) -> None:
    frame = bombs[kind]
    assert len(frame) < 64 * 1024  # small enough for any envelope
    cap = 16 * MiB
    with measured() as m:
        decompress(frame, cap)
    assert m.error is not None and m.error.reason is Reason.DECOMPRESSED_TOO_LARGE
    assert m.seconds < 0.5
    assert m.peak < 2 * cap


@pytest.mark.parametrize("kind", ["declared", "streamed"])
def test_a_signed_bomb_is_refused_by_decode(kind: str, bombs: dict[str, bytes]) -> None:
    data = _envelope(_header("status", bombs[kind]))
    limits = Limits(max_body_bytes=16 * MiB)
    with measured() as m:
        decode(data, KEY.verify_key, Status, limits)
    assert m.error is not None and m.error.reason is Reason.DECOMPRESSED_TOO_LARGE
    assert (m.error.sender, m.error.seq) == ("dev-a", 1)
    assert m.seconds < 0.5 and m.peak < 32 * MiB


@pytest.mark.parametrize(
    ("decoder", "header"),
    [
        (unpack_batch, b"\xdd\x80\x00\x00\x00"),  # array of 2**31 entries
        (unpack_batch, b"\xc6\x80\x00\x00\x00"),  # bin of 2 GiB
        (split, b"\xdd\x80\x00\x00\x00"),
        (split, b"\x92\xc6\x80\x00\x00\x00"),
        (lambda b: decode(_envelope(_header("status", compress(b))), KEY.verify_key, Status),
         b"\xdd\x80\x00\x00\x00"),
        (lambda b: decode(_envelope(_header("status", compress(b))), KEY.verify_key, Status),
         b"\xdf\x80\x00\x00\x00"),  # map of 2**31 pairs
        (lambda b: decode(_envelope(_header("status", compress(b))), KEY.verify_key, Status),
         b"\x81\xa3\x61\x72\x67\xdb\x80\x00\x00\x00"),  # str of 2 GiB inside a map
    ],
    ids=["batch-array", "batch-bin", "split-array", "split-bin", "body-array", "body-map",
         "body-str"],
)
def test_huge_msgpack_headers_are_refused_before_allocating(
        decoder: Callable[[bytes], object], header: bytes) -> None:
    with measured() as m:
        decoder(header + bytes(16))
    assert m.error is not None and m.error.reason is Reason.MALFORMED
    assert m.peak < MiB


def test_oversized_envelopes_are_refused_by_length() -> None:
    limits = Limits(max_envelope_bytes=1024)
    for decoder in (lambda b: split(b, limits), lambda b: unpack_batch(b, limits)):
        with pytest.raises(DecodeError) as info:
            decoder(bytes(1025))
        assert info.value.reason is Reason.TOO_LARGE
    entries = msgpack.packb([b"x"] * 513)
    with pytest.raises(DecodeError):
        unpack_batch(entries)  # more entries than max_batch_entries


@pytest.mark.parametrize(
    "tensor",
    [
        EncodedTensor("w", [2**40], Codec.FLOAT32, b""),
        EncodedTensor("w", [0, 2**40, 2**40], Codec.FLOAT32, b""),
        EncodedTensor("w", [2**20, 2**20], Codec.INT8, b"", b"\x00" * 4),
        EncodedTensor("w", [1] * 9, Codec.FLOAT32, b"\x00" * 4),
        EncodedTensor("w", [4], Codec.INT8, b"\x01" * 4, np.float32([1]).tobytes(), 2**40),
        EncodedTensor("w", [2**23], Codec.TOPK, b"\x01", np.float32([1]).tobytes(), 0,
                      np.array([2**23], "<u4").tobytes()),
    ],
    ids=["huge", "huge-with-zero", "huge-product", "rank-9", "huge-chunk", "topk-index"],
)
def test_hostile_shapes_cost_nothing(tensor: EncodedTensor) -> None:
    with measured() as m:
        decode_tensor(tensor)
    assert m.peak < MiB
    if tensor.chunk == 2**40:  # a legal chunk longer than the tensor: decoded, cheaply
        assert m.error is None
    else:
        assert isinstance(m.error, ValidationError)
        assert m.error.reason in (Reason.TOO_LARGE, Reason.BAD_SHAPE)


def test_tensor_count_and_total_size_are_bounded_before_decoding() -> None:
    with pytest.raises(ValidationError) as info:
        decode_params([EncodedTensor(f"t{i}", [1], Codec.FLOAT32, bytes(4)) for i in range(257)])
    assert info.value.reason is Reason.TOO_MANY_TENSORS
    big = [EncodedTensor(f"t{i}", [16_000_000], Codec.FLOAT32, b"") for i in range(3)]
    with measured() as m:
        decode_params(big)
    assert isinstance(m.error, ValidationError) and m.error.reason is Reason.TOO_LARGE
    assert m.error.path == "$.tensors" and m.peak < MiB
    with pytest.raises(ValidationError, match=r"duplicate tensor 'a' at \$\.tensors\[1\]\.name"):
        decode_params([EncodedTensor("a", [1], Codec.FLOAT32, bytes(4))] * 2)
