"""Aggregation and publication through the running service: FedBuff versions, retained
snapshot + bit-exact delta, chunked publication, evaluation and stopping rules."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from nacl.signing import VerifyKey

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.service import Orchestrator
from schemas import (
    Chunk,
    ChunkManifest,
    Codec,
    CodecSpec,
    ModelDelta,
    ModelSnapshot,
    Params,
    apply_xor_delta,
    decode,
    decode_params,
    params_digest,
)
from tests.support.retained import all_retained, retained_models
from tests.support.service_config import FED
from tests.support.sim_device import random_delta

FLOAT32 = CodecSpec(Codec.FLOAT32)


def _open_models(payloads: dict[str, bytes], key: VerifyKey, fed: str
                 ) -> tuple[ModelSnapshot, ModelDelta | None]:
    """Decode the retained snapshot and delta, reassembling chunked ones."""
    chunks = {}
    for topic, payload in payloads.items():
        if "/chunks/" in topic:
            _, chunk = decode(payload, key, Chunk)
            assert topic.endswith(hashlib.sha256(chunk.data).hexdigest())
            chunks[chunk.sha256] = chunk.data

    def inner(topic: str, expected: type[Any]) -> Any:
        payload = payloads[topic]
        try:
            return decode(payload, key, expected)[1]
        except Exception:
            _, manifest = decode(payload, key, ChunkManifest)
            data = b"".join(chunks[c] for c in manifest.chunks)
            assert hashlib.sha256(data).digest() == manifest.sha256
            assert manifest.inner_type == expected.TYPE
            return decode(data, key, expected)[1]

    snapshot = inner(f"fl/{fed}/model", ModelSnapshot)
    delta_topic = f"fl/{fed}/model/delta"
    delta = inner(delta_topic, ModelDelta) if delta_topic in payloads else None
    return snapshot, delta


async def _send_updates(orch: Orchestrator, devices: Callable[..., Any],
                        n: int, *, prefix: str = "dev") -> list[Params]:
    sent = []
    for i in range(n):
        dev = await devices(orch, f"{prefix}-{i}")
        delta = random_delta(orch.params, seed=i)
        seq, update = dev.update(delta, base_version=orch.version, num_samples=10 * (i + 1),
                                 codec=FLOAT32)
        await dev.send(update)
        await dev.wait_acks([seq])
        sent.append(delta)
    return sent


async def test_fedbuff_makes_version_1_and_a_fresh_subscriber_applies_it_bit_exactly(
    orchestrator: Orchestrator, devices: Callable[..., Any], broker: MosquittoBroker,
) -> None:
    v0 = {k: v.copy() for k, v in orchestrator.params.items()}
    sent = await _send_updates(orchestrator, devices, 3)  # k = 3
    async with asyncio.timeout(10):
        await orchestrator.wait_for_version(1, published=True)
    assert orchestrator.buffered == 0
    # FedBuff with no staleness and server lr 1: v1 = v0 + sample-weighted mean delta
    weights = np.array([10.0, 20.0, 30.0])
    for name in v0:
        mean = sum(w * d[name].astype(np.float64) for w, d in zip(weights, sent, strict=True))
        expected = v0[name] + (mean / weights.sum()).astype(np.float32)
        np.testing.assert_allclose(orchestrator.params[name], expected, rtol=1e-6, atol=1e-7)
    applied = await orchestrator.store.ledger(applied_version=1)
    assert len(applied) == 3 and {r.weight for r in applied} == {10.0, 20.0, 30.0}
    (info,) = [v for v in await orchestrator.store.list_versions() if v.version == 1]
    assert sorted(info.lineage["updates"]) == sorted(r.id for r in applied)

    key = VerifyKey(orchestrator.public_key)
    payloads = await retained_models(broker, expect=2)
    snapshot, delta = _open_models(payloads, key, FED)
    assert snapshot.version == 1 and snapshot.parent == 0 and not snapshot.stopped
    params = decode_params(snapshot.params)
    assert params_digest(params) == snapshot.params_sha256 == params_digest(orchestrator.params)
    assert set(snapshot.graphs) == {"train_step", "eval", "infer"}
    assert delta is not None and (delta.version, delta.base_version) == (1, 0)
    applied_params = apply_xor_delta(v0, decode_params(delta.xor))
    assert params_digest(applied_params) == delta.params_sha256
    for name in v0:
        assert applied_params[name].tobytes() == orchestrator.params[name].tobytes()


async def test_large_models_go_out_as_chunks_and_old_chunks_are_cleared(
    make_config: Callable[..., Config], devices: Callable[..., Any],
    broker: MosquittoBroker,
) -> None:
    # 650 float32 parameters: the snapshot cannot fit 2048 bytes
    config = make_config(broker={"max_message_bytes": 2048}, aggregation={"k": 1},
                         model={"n_features": 64, "n_classes": 10})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        async with asyncio.timeout(10):
            await orch.wait_for_version(0, published=True)
        key = VerifyKey(orch.public_key)
        first = await all_retained(broker)
        snapshot, delta = _open_models(first, key, FED)
        assert snapshot.version == 0 and delta is None
        assert all(len(p) <= 2048 for p in first.values())
        old_chunks = {t for t in first if "/chunks/" in t}
        assert len(old_chunks) > 1

        await _send_updates(orch, devices, 1)
        async with asyncio.timeout(10):
            await orch.wait_for_version(1, published=True)
        second = await all_retained(broker)
        snapshot, delta = _open_models(second, key, FED)
        assert snapshot.version == 1 and delta is not None and delta.version == 1
        assert params_digest(decode_params(snapshot.params)) == params_digest(orch.params)
        # the superseded chunks were cleared: only the new manifests' chunks are retained
        assert not old_chunks & set(second)
        assert all(len(p) <= 2048 for p in second.values())


async def test_server_evaluation_and_the_max_versions_rule_stop_the_federation(
    make_config: Callable[..., Config], devices: Callable[..., Any],
    broker: MosquittoBroker,
) -> None:
    config = make_config(
        model={"n_features": 64, "n_classes": 10}, aggregation={"k": 1},
        evaluation={"dataset": "digits"}, stopping={"max_versions": 1},
    )
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        await _send_updates(orch, devices, 1)
        async with asyncio.timeout(10):
            reason = await orch.wait_stopped()
        assert reason.startswith("max_versions")
        (v1,) = [v for v in await orch.store.list_versions() if v.version == 1]
        assert 0.0 <= v1.metrics["server_metric"] <= 1.0 and v1.metrics["server_samples"] == 360
        audit = await orch.store.list_audit(event="stopped")
        assert len(audit) == 1
        async with asyncio.timeout(10):
            while True:
                snapshot, _ = _open_models(await retained_models(broker, expect=2),
                                           VerifyKey(orch.public_key), FED)
                if snapshot.stopped:
                    break
        # no more tasks: an idle device is told the federation stopped
        dev = await devices(orch, "late")
        await dev.status(battery_pct=100.0)
        answer = await dev.next("task")
        assert answer.TYPE == "defer" and answer.reason == "federation_stopped"
