"""Hypothesis fuzzing of the ingestion entry point (:func:`orchestrator.ingest.process_group`,
the pure function that judges raw ``updates`` batches) and of the schema decoders, with
structured mutations of valid messages.

Mutations are applied at every layer an attacker controls — the batch bytes, an envelope's
bytes, the signed header map, the (zstd, msgpack) body and single tensor fields — and,
where the mutation sits under the signature, the result is re-signed with the device's key
(a compromised device), so the deep checks are reached rather than stopped at the signature.

Properties: judging never raises; every outcome is an accept, a duplicate or a typed reason;
an accepted delta fits the model, is finite and came from an authentic fresh seq; the replay
window marks only authentic seqs. A quick run is part of ``make test``; the ``chaos`` marker
runs the long one. Cases run are counted in ``FUZZ_CASES`` and printed (``-s``).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from orchestrator.ingest.pipeline import (
    Accept,
    Duplicate,
    IngestPolicy,
    ModelView,
    RawBatch,
    Reject,
    SenderView,
    process_group,
)
from schemas import (
    MESSAGE_TYPES,
    Codec,
    CodecSpec,
    FedmqError,
    Limits,
    Reason,
    ReplayWindow,
    Update,
    UpdateBatch,
    decode_body,
    encode_params,
    pack,
    pack_batch,
    seal_key,
    unpack_batch,
    unseal_key,
    verify,
)

FED, DEVICE = "fuzzfed", "dev-f"
SHAPES = {"W0": (8, 3), "b0": (3,)}
NOW_MS = 1_800_000_000_000
HIGH_SEQ = 4300
"""The device's replay window has seen this seq (and nothing else) before each batch."""
DEVICE_KEY = SigningKey(b"\x11" * 32)
ORCH_KEY = SigningKey(b"\x22" * 32)
LIMITS = Limits(max_envelope_bytes=1 << 20, max_body_bytes=1 << 20)
POLICY = IngestPolicy(fed=FED, limits=LIMITS, max_update_bytes=1 << 16, max_staleness=5,
                      max_update_norm=1e6)
MODEL = ModelView(version=3, shapes=SHAPES)
QUICK = settings(max_examples=300, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=5_000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
FUZZ_CASES: Counter[str] = Counter()
CODECS = [CodecSpec(Codec.FLOAT32), CodecSpec(Codec.FLOAT16), CodecSpec(Codec.INT8),
          CodecSpec(Codec.TOPK, topk_fraction=0.3)]


def _valid_entry(seq: int, codec: CodecSpec, sealed: bool) -> bytes:
    rng = np.random.default_rng(seq)
    delta = {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in SHAPES.items()}
    update = Update(task_id="t", base_version=2, num_samples=7,
                    tensors=encode_params(delta, codec, rng), codec=codec.codec)
    return pack(update, key=DEVICE_KEY, fed=FED, sender=DEVICE, seq=seq, ts_ms=NOW_MS - 1000,
                seal_to=seal_key(ORCH_KEY.verify_key) if sealed else None)


# -- mutations --------------------------------------------------------------------------------

wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats() | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8,
)


def _packable(value: Any) -> bytes:
    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out


def _resign(header: dict[str, Any]) -> bytes:
    signed = _packable(header)
    return _packable([signed, DEVICE_KEY.sign(signed).signature])


@st.composite
def mutated_entry(draw: st.DrawFn) -> bytes:
    # below the window (replays), inside it, the one already seen (a duplicate), ahead of it
    seq = draw(st.integers(1, 300) | st.integers(4200, 4400) | st.just(HIGH_SEQ))
    entry = _valid_entry(seq, draw(st.sampled_from(CODECS)), sealed=draw(st.booleans()))
    layer = draw(st.sampled_from(["none", "bytes", "header", "body", "tensor"]))
    FUZZ_CASES[f"layer.{layer}"] += 1
    if layer == "none":
        return entry
    if layer == "bytes":
        data = bytearray(entry)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "cut", "insert"]))
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            if op == "flip" and data:
                data[at] ^= draw(st.integers(1, 255))
            elif op == "cut":
                del data[at:at + draw(st.integers(1, 64))]
            else:
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
        return bytes(data)
    signed, _ = msgpack.unpackb(entry, raw=False)
    header = msgpack.unpackb(signed, raw=False)
    if layer == "header":
        key = draw(st.sampled_from([*header, "extra"]))
        if draw(st.booleans()):
            header[key] = draw(wire_values)
        else:
            header.pop(key, None)
        return _resign(header)
    if header["enc"] != "zstd":  # a sealed body: mutate its ciphertext under the signature
        body = bytearray(header["body"])
        body[draw(st.integers(0, len(body) - 1))] ^= 0xFF
        header["body"] = bytes(body)
        return _resign(header)
    fields = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(header["body"]),
                             raw=False)
    if layer == "body":
        key = draw(st.sampled_from([*fields, "extra"]))
        fields[key] = draw(wire_values)
    else:
        tensor = draw(st.sampled_from(fields["tensors"]))
        key = draw(st.sampled_from([*tensor, "extra"]))
        if key == "data" and draw(st.booleans()):  # same size, hostile values (NaN, Inf...)
            n = len(tensor["data"]) // 4 * 4
            values = np.frombuffer(tensor["data"][:n], np.uint8).copy()
            values[: draw(st.integers(0, n))] = draw(st.integers(0, 255))
            tensor["data"] = values.tobytes() + tensor["data"][n:]
        elif key == "shape":
            tensor["shape"] = draw(st.lists(st.integers(-2, 2**40), max_size=9))
        else:
            tensor[key] = draw(wire_values)
    header["body"] = zstandard.ZstdCompressor().compress(_packable(fields))
    return _resign(header)


@st.composite
def raw_batch(draw: st.DrawFn) -> bytes:
    entries = draw(st.lists(mutated_entry(), min_size=1, max_size=4))
    payload = pack_batch(UpdateBatch(entries))
    if draw(st.integers(0, 9)) == 0:  # now and then, damage the batch framing itself
        cut = draw(st.integers(0, len(payload)))
        payload = payload[:cut] + draw(st.binary(max_size=8))
    return payload


# -- properties -------------------------------------------------------------------------------


def _judge(payload: bytes) -> None:
    window = ReplayWindow()
    window.mark(HIGH_SEQ)  # seqs more than 4096 below are replays
    result = process_group(
        [RawBatch(DEVICE, payload, NOW_MS)], {DEVICE: SenderView("active", DEVICE_KEY.verify_key)},
        {DEVICE: window}, MODEL, POLICY, unseal_key(ORCH_KEY), NOW_MS)
    FUZZ_CASES["batches"] += 1
    (batch,) = result.batches
    if batch.failure is not None:
        assert isinstance(batch.failure.reason, Reason)
        FUZZ_CASES[f"batch.{batch.failure.reason.value}"] += 1
        return
    authentic: list[int] = []
    for outcome in batch.outcomes:
        FUZZ_CASES["entries"] += 1
        if isinstance(outcome, Accept):
            FUZZ_CASES["accepted"] += 1
            authentic.append(outcome.seq)
            assert outcome.header.fed == FED and outcome.header.sender == DEVICE
            assert {k: v.shape for k, v in outcome.delta.items()} == SHAPES
            assert all(np.isfinite(v).all() for v in outcome.delta.values())
            assert math.isfinite(outcome.norm) and outcome.norm <= 1e6
            assert MODEL.version - 5 <= outcome.update.base_version <= MODEL.version
        elif isinstance(outcome, Duplicate):
            FUZZ_CASES["duplicate"] += 1
        else:
            assert isinstance(outcome, Reject) and isinstance(outcome.reason, Reason)
            FUZZ_CASES[f"rejected.{outcome.reason.value}"] += 1
            if outcome.seq is not None:
                authentic.append(outcome.seq)
    # only authentic, fresh seqs are marked; each at most once
    marked = result.marks.get(DEVICE, [])
    assert len(marked) == len(set(marked)) and set(marked) <= set(authentic)
    assert HIGH_SEQ not in marked and all(s > HIGH_SEQ - 4096 for s in marked)


@QUICK
@given(raw_batch())
def test_ingest_judges_mutated_batches_quick(payload: bytes) -> None:
    _judge(payload)


@pytest.mark.chaos
@LONG
@given(raw_batch())
def test_ingest_judges_mutated_batches_long(payload: bytes) -> None:
    _judge(payload)


def test_huge_finite_values_are_judged_without_a_warning() -> None:
    """Found by the long fuzz run: float32 values near the maximum made the fast norm's dot
    product overflow with a RuntimeWarning (an error under this suite's filterwarnings)."""
    update = Update(task_id="t", base_version=3, num_samples=1, tensors=encode_params(
        {k: np.full(s, 3e38, np.float32) for k, s in SHAPES.items()},
        CodecSpec(Codec.FLOAT32), np.random.default_rng(0)))
    entry = pack(update, key=DEVICE_KEY, fed=FED, sender=DEVICE, seq=HIGH_SEQ + 1,
                 ts_ms=NOW_MS)
    result = process_group(
        [RawBatch(DEVICE, pack_batch(UpdateBatch([entry])), NOW_MS)],
        {DEVICE: SenderView("active", DEVICE_KEY.verify_key)}, {DEVICE: ReplayWindow()},
        MODEL, POLICY, unseal_key(ORCH_KEY), NOW_MS)
    (outcome,) = result.batches[0].outcomes
    assert isinstance(outcome, Reject) and outcome.reason is Reason.NORM_EXCEEDED


def _decode_any(data: bytes) -> None:
    """Every decoder a receiver runs on an envelope, each either succeeding or raising a
    :class:`FedmqError` (never anything else)."""
    FUZZ_CASES["decoder_inputs"] += 1
    try:
        unpack_batch(data, LIMITS)
    except FedmqError:
        pass
    try:
        opened = verify(data, DEVICE_KEY.verify_key, LIMITS)
    except FedmqError:
        return
    for cls in MESSAGE_TYPES.values():
        try:
            decode_body(opened, cls, LIMITS, unseal_key(ORCH_KEY))
        except FedmqError:
            pass


@QUICK
@given(mutated_entry())
def test_decoders_raise_only_typed_errors_quick(entry: bytes) -> None:
    _decode_any(entry)


@pytest.mark.chaos
@LONG
@given(mutated_entry())
def test_decoders_raise_only_typed_errors_long(entry: bytes) -> None:
    _decode_any(entry)


def test_report_fuzz_cases() -> None:
    """Prints what the fuzz tests of this module exercised (run last in the module)."""
    print(f"fuzz cases: {dict(sorted(FUZZ_CASES.items()))}")
    if FUZZ_CASES:
        assert FUZZ_CASES["batches"] + FUZZ_CASES["decoder_inputs"] > 0


@pytest.mark.chaos
def test_report_fuzz_cases_long() -> None:
    """The same report after the long run (``make chaos``)."""
    test_report_fuzz_cases()
