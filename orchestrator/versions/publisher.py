"""Publication of model versions: signed, retained snapshot and XOR delta, chunked if large.

Building the messages is pure (:func:`build_release`, run in a worker thread); the
:class:`ModelPublisher` moves the bytes. A model message whose envelope exceeds
``max_message_bytes`` is replaced by a signed ``ChunkManifest``; its envelope bytes are split
into signed ``Chunk`` messages, retained on ``fl/{fed}/model/chunks/{sha256hex}`` (hash of the
chunk data). Chunks go out before the manifest that names them; chunks of the previous release
that the new one does not reuse are cleared afterwards (an empty retained payload).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from nacl.signing import SigningKey

from orchestrator.errors import OrchestratorError
from orchestrator.link.sender import Outbound
from orchestrator.store.state_keys import ServerState, StateKey
from schemas.annex import ModelAnnex
from schemas.envelope import pack
from schemas.messages import Chunk, ChunkManifest, Message, ModelDelta, ModelSnapshot
from schemas.tensors import (
    Codec,
    CodecSpec,
    Params,
    encode_params,
    params_digest,
    xor_delta,
)
from schemas.topics import ORCHESTRATOR_SENDER, Topics

__all__ = [
    "ModelPublisher",
    "ModelRelease",
    "Outgoing",
    "PublishError",
    "Release",
    "arch_id",
    "build_release",
    "chunk_data_size",
    "seqs_needed",
]

_FLOAT32 = CodecSpec(Codec.FLOAT32)
# Envelope framing around a chunk's data: header map, signature, msgpack and zstd framing.
_CHUNK_OVERHEAD = 512


class PublishError(OrchestratorError):
    """A model cannot be published within the configured message size."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True)
class ModelRelease:
    """One version as the publisher needs it. ``base`` is the previous version and its
    parameters, for the delta (None: no delta, e.g. version 0)."""

    version: int
    params: Params = field(repr=False)
    graphs: Mapping[str, bytes] = field(repr=False)
    parent: int | None
    created_ms: int
    stopped: bool = False
    base: tuple[int, Params] | None = field(default=None, repr=False)
    annex: ModelAnnex = field(default_factory=ModelAnnex)


@dataclass(frozen=True)
class Release:
    """The publishable messages of one version: chunks first, then the model messages."""

    chunks: list[Outgoing]
    messages: list[Outgoing]

    @property
    def chunk_topics(self) -> set[str]:
        return {c.topic for c in self.chunks}


def arch_id(graphs: Mapping[str, bytes]) -> str:
    """A short identity of a set of graphs (the model architecture)."""
    h = hashlib.sha256()
    for name in sorted(graphs):
        h.update(name.encode() + b"\x00" + hashlib.sha256(graphs[name]).digest())
    return h.hexdigest()[:16]


def chunk_data_size(max_message_bytes: int) -> int:
    """Bytes of inner envelope per chunk so that a chunk's envelope fits the limit."""
    return max_message_bytes - _CHUNK_OVERHEAD - max_message_bytes // 256


def build_release(
    release: ModelRelease,
    *,
    key: SigningKey,
    topics: Topics,
    seqs: list[int],
    max_message_bytes: int,
) -> Release:
    """Sign the snapshot (and the delta, if ``release.base``), chunking what is too large.

    ``seqs`` must hold enough seqs: :func:`seqs_needed` gives an upper bound.
    """
    it = iter(seqs)

    def sign(message: Message) -> bytes:
        try:
            seq = next(it)
        except StopIteration:
            raise PublishError("not enough seqs reserved for this release") from None
        return pack(message, key=key, fed=topics.fed, sender=ORCHESTRATOR_SENDER, seq=seq,
                    ts_ms=release.created_ms)

    aid = arch_id(release.graphs)
    digest = params_digest(release.params)
    rng = np.random.default_rng(0)  # float32 encoding draws nothing; the API wants one
    snapshot = ModelSnapshot(
        version=release.version,
        params=encode_params(release.params, _FLOAT32, rng),
        params_sha256=digest,
        graphs=dict(release.graphs),
        arch_id=aid,
        parent=release.parent,
        created_ms=release.created_ms,
        stopped=release.stopped,
        annex=release.annex,
    )
    models: list[tuple[str, Message]] = [(topics.model, snapshot)]
    if release.base is not None:
        base_version, base_params = release.base
        xor = xor_delta(base_params, release.params)
        models.append((topics.model_delta, ModelDelta(
            version=release.version,
            base_version=base_version,
            xor=encode_params(xor, _FLOAT32, rng),
            params_sha256=digest,
            arch_id=aid,
            created_ms=release.created_ms,
            stopped=release.stopped,
            annex=release.annex,
        )))
    chunks: list[Outgoing] = []
    messages: list[Outgoing] = []
    for topic, message in models:
        envelope = sign(message)
        if len(envelope) <= max_message_bytes:
            messages.append(Outgoing(topic, envelope))
            continue
        manifest, parts = _split(envelope, message.TYPE, release.version, topics, sign,
                                 max_message_bytes)
        chunks.extend(parts)
        messages.append(Outgoing(topic, manifest))
    return Release(chunks, messages)


def seqs_needed(release: ModelRelease, max_message_bytes: int) -> int:
    """An upper bound on the seqs :func:`build_release` signs with."""
    size = sum(len(g) for g in release.graphs.values())
    size += sum(int(p.size) * 4 for p in release.params.values())
    per_model = 2 + math.ceil((size + 64 * 1024) * 1.01 / chunk_data_size(max_message_bytes))
    return per_model * 2


def _split(
    envelope: bytes,
    inner_type: str,
    version: int,
    topics: Topics,
    sign: Callable[[Message], bytes],
    max_message_bytes: int,
) -> tuple[bytes, list[Outgoing]]:
    size = chunk_data_size(max_message_bytes)
    if size < 256:
        raise PublishError(f"max_message_bytes {max_message_bytes} leaves no room for chunks")
    parts: list[Outgoing] = []
    hashes: list[bytes] = []
    for start in range(0, len(envelope), size):
        data = envelope[start:start + size]
        sha = hashlib.sha256(data).digest()
        chunk = sign(Chunk(sha256=sha, data=data))
        if len(chunk) > max_message_bytes:
            raise PublishError(f"a chunk envelope of {len(chunk)} bytes exceeds "
                               f"max_message_bytes {max_message_bytes}")
        hashes.append(sha)
        parts.append(Outgoing(topics.chunk(sha.hex()), chunk))
    manifest = sign(ChunkManifest(inner_type=inner_type, version=version,
                                  total_size=len(envelope),
                                  sha256=hashlib.sha256(envelope).digest(), chunks=hashes))
    if len(manifest) > max_message_bytes:
        raise PublishError(f"the chunk manifest ({len(manifest)} bytes) exceeds "
                           f"max_message_bytes {max_message_bytes}; raise it")
    return manifest, parts


class ModelPublisher:
    """Publishes releases in order and clears superseded chunks.

    The set of chunk topics currently retained is kept in ``state``
    (:attr:`StateKey.PUBLISHED_CHUNKS`), so a restarted orchestrator still clears what its
    predecessor left behind.
    """

    def __init__(self, outbound: Outbound, state: ServerState, *,
                 max_message_bytes: int) -> None:
        self._outbound = outbound
        self._state = state
        self._max = max_message_bytes
        self._lock = asyncio.Lock()

    async def _chunks(self) -> set[str]:
        raw = await self._state.get_server_state(StateKey.PUBLISHED_CHUNKS)
        return set(json.loads(raw)) if raw else set()

    async def _save_chunks(self, topics: set[str]) -> None:
        await self._state.put_server_state(
            {StateKey.PUBLISHED_CHUNKS: json.dumps(sorted(topics)).encode()})

    async def publish(self, release: ModelRelease) -> Release:
        """Raises ``NotConnectedError`` when the link is down (call again once it is up)."""
        out = self._outbound
        async with self._lock:
            seqs = await out.reserve(seqs_needed(release, self._max))
            built = await asyncio.to_thread(
                build_release, release, key=out.key, topics=out.topics, seqs=seqs,
                max_message_bytes=self._max,
            )
            previous = await self._chunks()
            new_chunks = built.chunk_topics
            # Record the union first: if we die half-way, the next start clears both sets.
            await self._save_chunks(previous | new_chunks)
            for message in [*built.chunks, *built.messages]:
                await out.publish(message.topic, message.payload, qos=1, retain=True)
            if release.base is None:
                # no delta for this version: a retained delta from an older one must not linger
                await out.publish(out.topics.model_delta, b"", qos=1, retain=True)
            for topic in sorted(previous - new_chunks):
                await out.publish(topic, b"", qos=1, retain=True)
            await self._save_chunks(new_chunks)
            return built
