"""ModelReceiver: snapshots, lossless deltas, chunked messages, and everything forged."""

from __future__ import annotations

import dataclasses
import hashlib
import time

import numpy as np
import pytest
from nacl.signing import SigningKey

from edge_agent.models import ModelReceiver
from edge_agent.state import StoredModel
from schemas import (
    Chunk,
    ChunkManifest,
    Codec,
    CodecSpec,
    FedmqError,
    Message,
    ModelDelta,
    ModelSnapshot,
    Params,
    Reason,
    decode,
    encode_params,
    pack,
    params_digest,
    verify,
    xor_delta,
)
from schemas.annex import ModelAnnex

FED = "fed1"
KEY = SigningKey.generate()
GRAPHS = {"train_step": b"t", "eval": b"e", "infer": b"i"}
F32 = CodecSpec(Codec.FLOAT32)
RNG = np.random.default_rng(0)


def _params(seed: int) -> Params:
    rng = np.random.default_rng(seed)
    return {"W": rng.normal(size=(4, 3)).astype(np.float32),
            "b": rng.normal(size=3).astype(np.float32)}


def _sign(message: Message, *, key: SigningKey = KEY, fed: str = FED,
          sender: str = "orchestrator", seq: int = 1) -> bytes:
    return pack(message, key=key, fed=fed, sender=sender, seq=seq,
                ts_ms=int(time.time() * 1000))


def _snapshot(version: int, params: Params, stopped: bool = False) -> ModelSnapshot:
    return ModelSnapshot(version, encode_params(params, F32, RNG), params_digest(params),
                         GRAPHS, "arch", stopped=stopped)


def test_a_republished_version_with_a_new_annex_is_adopted_as_such(
        receiver: ModelReceiver) -> None:
    p1 = _params(1)
    held = receiver.handle("snapshot", _sign(_snapshot(3, p1)), None).model
    assert held is not None and held.annex == ModelAnnex()
    agreed = ModelAnnex([1.0], [2.0], anomaly_threshold=0.7, threshold_version=3)
    snap = dataclasses.replace(_snapshot(3, p1), annex=agreed)
    got = receiver.handle("snapshot", _sign(snap), held)
    assert got.model is not None and got.model.annex == agreed and "annex" in got.note
    assert _same(got.model.params, p1) and got.model.version == 3
    assert receiver.handle("snapshot", _sign(snap), got.model).model is None  # nothing new
    # a newer version's annex comes with it, by snapshot as by delta
    p2 = _params(2)
    later = dataclasses.replace(_delta(4, 3, p1, p2), annex=agreed)
    moved = receiver.handle("delta", _sign(later), got.model).model
    assert moved is not None and moved.version == 4 and moved.annex == agreed


def _delta(version: int, base: int, old: Params, new: Params,
           digest: bytes | None = None) -> ModelDelta:
    xor = encode_params(xor_delta(old, new), F32, RNG)
    return ModelDelta(version, base, xor, digest or params_digest(new), "arch")


def _same(a: Params, b: Params) -> bool:
    return list(a) == list(b) and all(
        np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)) for k in a)


@pytest.fixture
def receiver() -> ModelReceiver:
    return ModelReceiver(orchestrator_key=KEY.verify_key, fed=FED,
                         chunk_cache_bytes=4096)


def test_snapshot_then_bit_exact_delta(receiver: ModelReceiver) -> None:
    p1, p2 = _params(1), _params(2)
    got = receiver.handle("snapshot", _sign(_snapshot(1, p1)), None)
    assert got.model is not None and got.model.version == 1 and _same(got.model.params, p1)
    assert got.model.graphs == GRAPHS
    after = receiver.handle("delta", _sign(_delta(2, 1, p1, p2)), got.model)
    assert after.model is not None and after.model.version == 2
    assert _same(after.model.params, p2) and after.model.graphs == GRAPHS


def test_versions_only_move_forward(receiver: ModelReceiver) -> None:
    p1 = _params(1)
    held = StoredModel(3, p1, GRAPHS, "arch")
    assert receiver.handle("snapshot", _sign(_snapshot(2, p1)), held).model is None
    assert receiver.handle("snapshot", _sign(_snapshot(3, p1)), held).model is None
    stopped = receiver.handle("snapshot", _sign(_snapshot(3, p1, stopped=True)), held)
    assert stopped.model is not None and stopped.model.stopped and stopped.model.version == 3
    # the same version republished without ``stopped``: the federation resumed
    resumed = receiver.handle("snapshot", _sign(_snapshot(3, p1)), stopped.model)
    assert resumed.model is not None and not resumed.model.stopped and "resumed" in resumed.note
    assert _same(resumed.model.params, p1)
    assert receiver.handle("snapshot", _sign(_snapshot(3, p1)), resumed.model).model is None


def test_delta_from_another_base_is_ignored(receiver: ModelReceiver) -> None:
    p1, p2, p3 = _params(1), _params(2), _params(3)
    held = StoredModel(1, p1, GRAPHS, "arch")
    got = receiver.handle("delta", _sign(_delta(3, 2, p2, p3)), held)
    assert got.model is None and "we hold v1" in got.note
    assert receiver.handle("delta", _sign(_delta(2, 1, p1, p2)), None).model is None


def test_delta_that_misses_its_digest_is_refused(receiver: ModelReceiver) -> None:
    p1, p2 = _params(1), _params(2)
    held = StoredModel(1, p1, GRAPHS, "arch")
    with pytest.raises(FedmqError) as caught:
        receiver.handle("delta", _sign(_delta(2, 1, p1, p2, digest=b"\0" * 32)), held)
    assert caught.value.reason is Reason.HASH_MISMATCH


def test_snapshot_with_wrong_digest_or_missing_graph_is_refused(
        receiver: ModelReceiver) -> None:
    p1 = _params(1)
    bad = ModelSnapshot(1, encode_params(p1, F32, RNG), b"\1" * 32, GRAPHS, "arch")
    with pytest.raises(FedmqError) as caught:
        receiver.handle("snapshot", _sign(bad), None)
    assert caught.value.reason is Reason.HASH_MISMATCH
    no_eval = ModelSnapshot(1, encode_params(p1, F32, RNG), params_digest(p1),
                            {"train_step": b"t"}, "arch")
    with pytest.raises(FedmqError):
        receiver.handle("snapshot", _sign(no_eval), None)


@pytest.mark.parametrize(("sign", "reason"), [
    ({"key": SigningKey.generate()}, Reason.BAD_SIGNATURE),
    ({"fed": "other"}, Reason.WRONG_FEDERATION),
    ({"sender": "dev-x"}, Reason.SENDER_MISMATCH),
])
def test_forged_models_are_refused(receiver: ModelReceiver, sign: dict[str, object],
                                   reason: Reason) -> None:
    with pytest.raises(FedmqError) as caught:
        snapshot = _sign(_snapshot(1, _params(1)), **sign)  # type: ignore[arg-type]
        receiver.handle("snapshot", snapshot, None)
    assert caught.value.reason is reason


def test_a_delta_on_the_snapshot_topic_is_refused(receiver: ModelReceiver) -> None:
    p1, p2 = _params(1), _params(2)
    with pytest.raises(FedmqError) as caught:
        receiver.handle("snapshot", _sign(_delta(2, 1, p1, p2)),
                        StoredModel(1, p1, GRAPHS, "arch"))
    assert caught.value.reason is Reason.WRONG_TYPE


def _chunked(inner: bytes, version: int, size: int, inner_type: str = "model"
             ) -> tuple[bytes, list[bytes]]:
    pieces = [inner[i:i + size] for i in range(0, len(inner), size)]
    digests = [hashlib.sha256(p).digest() for p in pieces]
    manifest = ChunkManifest(inner_type, version, len(inner), hashlib.sha256(inner).digest(),
                             digests)
    chunks = [_sign(Chunk(d, p), seq=10 + i) for i, (d, p) in enumerate(zip(digests, pieces,
                                                                            strict=True))]
    return _sign(manifest, seq=2), chunks


@pytest.mark.parametrize("manifest_first", [True, False])
def test_chunked_snapshot_is_reassembled(manifest_first: bool) -> None:
    receiver = ModelReceiver(orchestrator_key=KEY.verify_key, fed=FED)
    p1 = _params(1)
    inner = _sign(_snapshot(5, p1))
    manifest, chunks = _chunked(inner, 5, 100)
    assert len(chunks) > 2
    results = []
    if manifest_first:
        results.append(receiver.handle("snapshot", manifest, None))
    for raw in chunks:
        sha = hashlib.sha256(_chunk_data(raw)).hexdigest()
        results.append(receiver.handle("chunk", raw, None, sha))
    if not manifest_first:
        results.append(receiver.handle("snapshot", manifest, None))
    models = [r.model for r in results if r.model is not None]
    assert len(models) == 1 and models[0].version == 5 and _same(models[0].params, p1)
    assert receiver.cached_chunk_bytes == 0


def _chunk_data(raw: bytes) -> bytes:
    return decode(raw, KEY.verify_key, Chunk)[1].data


def test_chunked_raw_body_is_accepted_under_the_signed_manifest() -> None:
    """The reassembled bytes may also be the inner message's body (zstd msgpack) alone."""
    receiver = ModelReceiver(orchestrator_key=KEY.verify_key, fed=FED)
    p1 = _params(4)
    body = verify(_sign(_snapshot(2, p1)), KEY.verify_key).body
    manifest, chunks = _chunked(body, 2, 256)
    receiver.handle("snapshot", manifest, None)
    got = [receiver.handle("chunk", c, None).model for c in chunks]
    assert got[-1] is not None and _same(got[-1].params, p1)


def test_chunk_with_wrong_hash_is_refused(receiver: ModelReceiver) -> None:
    raw = _sign(Chunk(b"\0" * 32, b"data"))
    with pytest.raises(FedmqError) as caught:
        receiver.handle("chunk", raw, None)
    assert caught.value.reason is Reason.HASH_MISMATCH
    good = _sign(Chunk(hashlib.sha256(b"data").digest(), b"data"))
    with pytest.raises(FedmqError):
        receiver.handle("chunk", good, None, "00" * 32)  # the topic names another hash


def test_chunk_cache_is_bounded(receiver: ModelReceiver) -> None:
    for i in range(50):
        data = bytes([i]) * 500
        receiver.handle("chunk", _sign(Chunk(hashlib.sha256(data).digest(), data)), None)
        assert receiver.cached_chunk_bytes <= 4096


def test_oversized_manifest_is_refused() -> None:
    receiver = ModelReceiver(orchestrator_key=KEY.verify_key, fed=FED, max_model_bytes=1000)
    manifest = ChunkManifest("model", 1, 2000, b"\0" * 32, [b"\0" * 32])
    with pytest.raises(FedmqError) as caught:
        receiver.handle("snapshot", _sign(manifest), None)
    assert caught.value.reason is Reason.TOO_LARGE
