"""The ingestion checks as pure functions: every outcome, what gets marked, the ledger rows."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from nacl.signing import SigningKey

from orchestrator.ingest.buffer_codec import decode_buffered
from orchestrator.ingest.pipeline import (
    Accept,
    IngestPolicy,
    ModelView,
    RawBatch,
    Reject,
    SenderView,
    incoming_rows,
    process_group,
    to_incoming,
)
from schemas import (
    DEFAULT_LIMITS,
    AckOutcome,
    Codec,
    CodecSpec,
    ReplayWindow,
    Update,
    UpdateBatch,
    encode_params,
    pack,
    pack_batch,
    seal_key,
    unseal_key,
)

FED = "f"
ORCH = SigningKey.generate()
DEV = SigningKey.generate()
SHAPES = {"W0": (4, 2), "b0": (2,)}
POLICY = IngestPolicy(fed=FED, limits=DEFAULT_LIMITS, max_update_bytes=4096, max_staleness=2,
                      max_update_norm=10.0)
MODEL = ModelView(version=3, shapes=SHAPES)


def _delta(value: float = 0.1) -> dict[str, np.ndarray]:
    return {n: np.full(s, value, np.float32) for n, s in SHAPES.items()}


def _update(seq: int, delta: dict[str, np.ndarray] | None = None, *, base: int = 3,
            key: SigningKey = DEV, fed: str = FED, sender: str = "d", ts: int | None = None,
            **fields: Any) -> bytes:
    tensors = encode_params(delta if delta is not None else _delta(),
                            CodecSpec(Codec.FLOAT32), np.random.default_rng(0))
    message = Update(task_id="t", base_version=base, num_samples=5, tensors=tensors, **fields)
    return pack(message, key=key, fed=fed, sender=sender, seq=seq,
                ts_ms=ts if ts is not None else int(time.time() * 1000),
                seal_to=seal_key(ORCH.verify_key))


def _run(*entries: bytes, status: str = "active", window: ReplayWindow | None = None,
         device: str = "d") -> Any:
    windows = {"d": window if window is not None else ReplayWindow()}
    senders = {"d": SenderView(status, DEV.verify_key)}
    batch = RawBatch(device, pack_batch(UpdateBatch(list(entries))), 1)
    return process_group([batch], senders, windows, MODEL, POLICY, unseal_key(ORCH),
                         int(time.time() * 1000)), windows["d"]


def _reasons(result: Any) -> list[str]:
    return [o.reason.value if isinstance(o, Reject) else type(o).__name__
            for o in result.batches[0].outcomes]


def test_a_good_update_is_accepted_and_marked() -> None:
    result, window = _run(_update(1))
    (outcome,) = result.batches[0].outcomes
    assert isinstance(outcome, Accept) and outcome.seq == 1
    assert abs(outcome.norm - np.sqrt(10 * 0.1**2)) < 1e-6
    assert result.marks == {"d": [1]} and window.classify(1).value == "duplicate"
    (row,) = to_incoming(result.batches[0])
    assert row.status == "buffered" and row.meta["sealed"] is True
    assert [e.outcome for e in result.batches[0].ack_entries()] == [AckOutcome.ACCEPTED]


def test_the_same_seq_twice_in_a_group_is_a_duplicate() -> None:
    entry = _update(1)
    result, _ = _run(entry, entry)
    assert _reasons(result) == ["Accept", "Duplicate"]
    assert len(to_incoming(result.batches[0])) == 1  # duplicates add no ledger row


def test_content_rejections_use_up_the_seq() -> None:
    nan = _delta()
    nan["b0"][0] = np.nan
    big = {n: np.full(s, 100.0, np.float32) for n, s in SHAPES.items()}
    wrong = {"W0": np.zeros((3, 3), np.float32), "b0": np.zeros(2, np.float32)}
    extra = {**_delta(), "x": np.zeros(1, np.float32)}
    result, _ = _run(_update(1, nan), _update(2, big), _update(3, wrong), _update(4, extra),
                          _update(5, base=0), _update(6, base=9),
                          _update(7, {}))
    assert _reasons(result) == ["non_finite", "norm_exceeded", "shape_mismatch",
                                "unexpected_tensor", "stale", "unknown_version",
                                "missing_tensor"]
    assert result.marks == {"d": [1, 2, 3, 4, 5, 6, 7]}
    rows = to_incoming(result.batches[0])
    assert {r.status for r in rows} == {"rejected"} and rows[4].base_version == 0
    assert all(e.outcome is AckOutcome.REJECTED for e in result.batches[0].ack_entries())


def test_incoming_rows_carry_each_accepted_blob() -> None:
    good = _delta(0.2)
    nan = _delta()
    nan["b0"][0] = np.nan
    first = _update(1, good)
    result, _ = _run(first, first, _update(2, nan), _update(3))
    assert _reasons(result) == ["Accept", "Duplicate", "non_finite", "Accept"]
    rows = incoming_rows(result)
    assert [r.status for r in rows] == ["buffered", "rejected", "buffered"]
    assert rows[1].delta is None
    for row, outcome in zip((rows[0], rows[2]), (result.batches[0].outcomes[0],
                                                 result.batches[0].outcomes[3]), strict=True):
        assert isinstance(outcome, Accept) and outcome.blob is row.delta
        assert outcome.update.tensors == []  # what crosses back from a worker stays small
    accepted = result.batches[0].outcomes[0]
    assert isinstance(accepted, Accept)
    # the blob restores what was validated (float32 on the wire: the very values sent)
    assert isinstance(rows[0].delta, bytes)
    assert np.array_equal(decode_buffered(rows[0].delta)["W0"], good["W0"])
    assert np.array_equal(accepted.delta["W0"], good["W0"])


def test_authenticity_and_binding_rejections_do_not_mark() -> None:
    now = int(time.time() * 1000)
    result, window = _run(
        _update(1, key=SigningKey.generate()),             # forged
        _update(2, fed="other"),                           # wrong federation
        _update(3, sender="e"),                            # signed as someone else
        _update(4, ts=now + 3_600_000),                    # from the future
        b"\x92\xc4\x01x\xc4\x01y",                         # not an envelope
    )
    assert _reasons(result) == ["bad_signature", "wrong_federation", "sender_mismatch",
                                "future_timestamp", "malformed"]
    assert result.marks == {} and window.high == -1
    # only authentic seqs are answered
    assert [e.seq for e in result.batches[0].ack_entries()] == [2, 3, 4]


def test_replay_below_the_window() -> None:
    window = ReplayWindow()
    window.mark(10_000)
    result, _ = _run(_update(5), window=window)
    assert _reasons(result) == ["replay"] and result.marks == {}


def test_device_status_is_checked_after_the_signature() -> None:
    for status, reason in (("revoked", "revoked"), ("isolated", "isolated"),
                           ("awaiting_approval", "not_authorized")):
        result, _ = _run(_update(1), status=status)
        assert _reasons(result) == [reason]
        assert result.batches[0].outcomes[0].seq == 1  # authentic: answered
        assert result.marks == {}


def test_unknown_sender_and_oversized_entries() -> None:
    batch = RawBatch("stranger", pack_batch(UpdateBatch([_update(1)])), 1)
    result = process_group([batch], {}, {}, MODEL, POLICY, unseal_key(ORCH), 0)
    assert _reasons(result) == ["unknown_sender"]
    huge = {n: np.ones(s, np.float32) for n, s in SHAPES.items()}
    small = IngestPolicy(FED, DEFAULT_LIMITS, max_update_bytes=200, max_staleness=2)
    batch = RawBatch("d", pack_batch(UpdateBatch([_update(1, huge)])), 1)
    result = process_group([batch], {"d": SenderView("active", DEV.verify_key)},
                           {"d": ReplayWindow()}, MODEL, small, unseal_key(ORCH),
                           int(time.time() * 1000))
    assert _reasons(result) == ["too_large"] and result.marks == {"d": [1]}


def test_a_payload_that_is_not_a_batch_fails_as_a_whole() -> None:
    batch = RawBatch("d", b"\xc1", 7)
    result = process_group([batch], {}, {}, MODEL, POLICY, unseal_key(ORCH), 0)
    assert result.batches[0].failure is not None
    (row,) = to_incoming(result.batches[0])
    assert (row.status, row.reason, row.sender, row.seq) == ("rejected", "malformed", "d", None)
