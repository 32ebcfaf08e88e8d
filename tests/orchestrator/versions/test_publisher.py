"""Building model releases (pure): snapshot, XOR delta, chunking within the size limit."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from nacl.signing import SigningKey

from orchestrator.versions.publisher import (
    ModelRelease,
    PublishError,
    build_release,
    chunk_data_size,
    seqs_needed,
)
from schemas import (
    Chunk,
    ChunkManifest,
    ModelDelta,
    ModelSnapshot,
    Topics,
    apply_xor_delta,
    decode,
    decode_params,
    params_digest,
)

KEY = SigningKey.generate()
TOPICS = Topics("fed")


def _release(n: int = 1000, *, base: bool = True) -> ModelRelease:
    rng = np.random.default_rng(0)
    old = {"W": rng.standard_normal((n,)).astype(np.float32)}
    new = {"W": old["W"] + np.float32(0.01)}
    return ModelRelease(version=2, params=new, graphs={"eval": b"g" * 100}, parent=1,
                        created_ms=5, base=(1, old) if base else None)


def _build(release: ModelRelease, max_bytes: int) -> tuple[list, list]:  # type: ignore[type-arg]
    built = build_release(release, key=KEY, topics=TOPICS,
                          seqs=list(range(seqs_needed(release, max_bytes))),
                          max_message_bytes=max_bytes)
    return built.chunks, built.messages


def test_small_release_is_a_snapshot_and_a_delta() -> None:
    release = _release()
    chunks, messages = _build(release, 1 << 20)
    assert chunks == [] and [m.topic for m in messages] == ["fl/fed/model", "fl/fed/model/delta"]
    _, snapshot = decode(messages[0].payload, KEY.verify_key, ModelSnapshot)
    assert (snapshot.version, snapshot.parent, snapshot.created_ms) == (2, 1, 5)
    assert params_digest(decode_params(snapshot.params)) == params_digest(release.params)
    _, delta = decode(messages[1].payload, KEY.verify_key, ModelDelta)
    assert release.base is not None
    rebuilt = apply_xor_delta(release.base[1], decode_params(delta.xor))
    assert rebuilt["W"].tobytes() == release.params["W"].tobytes()
    assert delta.params_sha256 == snapshot.params_sha256 and delta.arch_id == snapshot.arch_id


def test_large_release_is_chunked_within_the_limit() -> None:
    release = _release(20_000, base=False)
    chunks, messages = _build(release, 8192)
    assert len(messages) == 1 and len(chunks) > 5
    assert all(len(c.payload) <= 8192 for c in chunks + messages)
    _, manifest = decode(messages[0].payload, KEY.verify_key, ChunkManifest)
    assert manifest.inner_type == "model" and manifest.version == 2
    data = b""
    for sha, out in zip(manifest.chunks, chunks, strict=True):
        _, chunk = decode(out.payload, KEY.verify_key, Chunk)
        assert chunk.sha256 == sha == hashlib.sha256(chunk.data).digest()
        assert out.topic == f"fl/fed/model/chunks/{sha.hex()}"
        data += chunk.data
    assert len(data) == manifest.total_size and hashlib.sha256(data).digest() == manifest.sha256
    _, snapshot = decode(data, KEY.verify_key, ModelSnapshot)
    assert params_digest(decode_params(snapshot.params)) == params_digest(release.params)


def test_limits_that_cannot_work_are_refused() -> None:
    with pytest.raises(PublishError):
        _build(_release(20_000), 700)
    with pytest.raises(PublishError, match="seqs"):
        build_release(_release(), key=KEY, topics=TOPICS, seqs=[1], max_message_bytes=1 << 20)
    assert chunk_data_size(8192) < 8192
