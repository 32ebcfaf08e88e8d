"""Applying the orchestrator's model messages: snapshots, lossless deltas, chunked messages.

``ModelReceiver.handle`` is synchronous and CPU-bound (signature checks, decoding, hashing):
the agent runs it in a worker thread, one message at a time. Every message must verify against
the orchestrator key pinned at enrollment and name this federation; versions only move
forward; a delta is applied only to the exact base it was made from and must reproduce the
announced ``params_sha256``. A message too large for one MQTT packet arrives as a
``ChunkManifest`` plus hash-addressed ``Chunk``s; chunks are kept in a byte-bounded cache until
their manifest is complete.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from nacl.signing import VerifyKey

from schemas import (
    DEFAULT_LIMITS,
    Chunk,
    ChunkManifest,
    DecodeError,
    FedmqError,
    Header,
    Limits,
    ModelDelta,
    ModelSnapshot,
    Opened,
    Reason,
    apply_xor_delta,
    check_header,
    decode_body,
    decode_params,
    params_digest,
    split,
    verify,
)
from schemas.topics import ORCHESTRATOR_SENDER

from .state import StoredModel

REQUIRED_GRAPHS = ("train_step", "eval")
MAX_CHUNKS = 65_536


@dataclass(frozen=True, slots=True)
class Received:
    """What a model message did: a new model to adopt, or why nothing changed."""

    model: StoredModel | None
    note: str


@dataclass(slots=True)
class _Pending:
    manifest: ChunkManifest
    header: Header


class Verifier(Protocol):
    """Verifies an orchestrator envelope (``OrchestratorKeys``: the pinned key ring)."""

    def verify(self, data: bytes, limits: Limits = ...) -> Opened: ...


class _OneKey:
    def __init__(self, key: VerifyKey) -> None:
        self._key = key

    def verify(self, data: bytes, limits: Limits = DEFAULT_LIMITS) -> Opened:
        return verify(data, self._key, limits)


class ModelReceiver:
    def __init__(
        self,
        *,
        orchestrator_key: VerifyKey | Verifier,
        fed: str,
        limits: Limits = DEFAULT_LIMITS,
        max_model_bytes: int = 64 * 1024 * 1024,
        chunk_cache_bytes: int = 128 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys: Verifier = _OneKey(orchestrator_key) if isinstance(
            orchestrator_key, VerifyKey) else orchestrator_key
        self._fed = fed
        self._limits = limits
        self._max_model_bytes = max_model_bytes
        # a reassembled message may be larger than one packet, never than this
        self._big_limits = replace(limits, max_envelope_bytes=max_model_bytes,
                                   max_body_bytes=max(limits.max_body_bytes, max_model_bytes))
        self._cache_cap = chunk_cache_bytes
        self._clock = clock
        self._chunks: OrderedDict[bytes, bytes] = OrderedDict()
        self._cached_bytes = 0
        self._pending: dict[str, _Pending] = {}

    @property
    def cached_chunk_bytes(self) -> int:
        return self._cached_bytes

    def handle(self, kind: str, payload: bytes, current: StoredModel | None,
               chunk_sha: str | None = None) -> Received:
        """``kind`` is the topic kind: ``snapshot``, ``delta`` or ``chunk`` (whose topic names
        ``chunk_sha``). Raises ``FedmqError`` (with a reason) for anything forged or broken."""
        opened = self._keys.verify(payload, self._limits)
        check_header(opened.header, fed=self._fed, sender=ORCHESTRATOR_SENDER,
                     now_ms=int(self._clock() * 1000), limits=self._limits, recipient="")
        kind_type = opened.header.type
        if kind == "chunk":
            if kind_type != Chunk.TYPE:
                raise DecodeError(Reason.WRONG_TYPE, f"{kind_type!r} on a chunk topic")
            return self._chunk(decode_body(opened, Chunk, self._limits), chunk_sha, current)
        if kind_type == ChunkManifest.TYPE:
            return self._manifest(kind, opened, current)
        return self._message(kind, opened, current, self._limits)

    # -- whole messages -------------------------------------------------------------------------

    def _message(self, kind: str, opened: Opened, current: StoredModel | None,
                 limits: Limits) -> Received:
        if kind == "snapshot":
            return self._snapshot(decode_body(opened, ModelSnapshot, limits), current, limits)
        if kind == "delta":
            return self._delta(decode_body(opened, ModelDelta, limits), current, limits)
        raise DecodeError(Reason.BAD_TOPIC, f"no model message kind {kind!r}")

    def _snapshot(self, snap: ModelSnapshot, current: StoredModel | None,
                  limits: Limits) -> Received:
        if current is not None and snap.version < current.version:
            return Received(None, f"snapshot v{snap.version} is older than v{current.version}")
        if current is not None and snap.version == current.version:
            if snap.stopped != current.stopped:  # a stop, or a resume, of the federation
                return Received(replace(current, stopped=snap.stopped, annex=snap.annex),
                                f"v{snap.version} {'stopped' if snap.stopped else 'resumed'}")
            if snap.annex != current.annex:  # e.g. the threshold agreed for this version
                return Received(replace(current, annex=snap.annex),
                                f"v{snap.version} annex updated")
            return Received(None, f"already hold v{snap.version}")
        missing = [g for g in REQUIRED_GRAPHS if g not in snap.graphs]
        if missing:
            raise FedmqError(Reason.INVALID_FIELD, f"snapshot lacks graph(s) {missing}")
        params = decode_params(snap.params, limits, "$.params")
        if params_digest(params) != snap.params_sha256:
            raise FedmqError(Reason.HASH_MISMATCH, f"snapshot v{snap.version} params digest")
        model = StoredModel(snap.version, params, dict(snap.graphs), snap.arch_id, snap.stopped,
                            snap.annex)
        return Received(model, f"snapshot v{snap.version}")

    def _delta(self, delta: ModelDelta, current: StoredModel | None, limits: Limits) -> Received:
        if current is None:
            return Received(None, f"delta v{delta.version}: no base held")
        if delta.version <= current.version:
            return Received(None, f"delta v{delta.version}: already hold v{current.version}")
        if delta.base_version != current.version:
            return Received(None, f"delta v{delta.version} is from v{delta.base_version}, "
                                  f"we hold v{current.version}")
        if delta.arch_id and current.arch_id and delta.arch_id != current.arch_id:
            return Received(None, f"delta v{delta.version} is for another architecture")
        xor = decode_params(delta.xor, limits, "$.xor")
        try:
            params = apply_xor_delta(current.params, xor)
        except ValueError as exc:
            raise FedmqError(Reason.SHAPE_MISMATCH, f"delta v{delta.version}: {exc}") from None
        if params_digest(params) != delta.params_sha256:
            raise FedmqError(Reason.HASH_MISMATCH, f"delta v{delta.version} params digest")
        model = StoredModel(delta.version, params, current.graphs, current.arch_id, delta.stopped,
                            delta.annex)
        return Received(model, f"delta v{delta.base_version}->v{delta.version}")

    # -- chunked messages -----------------------------------------------------------------------

    def _manifest(self, kind: str, opened: Opened, current: StoredModel | None) -> Received:
        manifest = decode_body(opened, ChunkManifest, self._limits)
        expected = {"snapshot": ModelSnapshot.TYPE, "delta": ModelDelta.TYPE}.get(kind)
        if manifest.inner_type != expected:
            raise DecodeError(Reason.WRONG_TYPE,
                              f"manifest of {manifest.inner_type!r} on the {kind} topic")
        if not 0 < manifest.total_size <= self._max_model_bytes:
            raise FedmqError(Reason.TOO_LARGE, f"chunked model of {manifest.total_size} bytes")
        if not 0 < len(manifest.chunks) <= MAX_CHUNKS or any(
                len(c) != 32 for c in manifest.chunks) or len(manifest.sha256) != 32:
            raise FedmqError(Reason.MALFORMED, "manifest chunk list is malformed")
        if current is not None and manifest.version < current.version:
            return Received(None, f"chunked v{manifest.version} is older than v{current.version}")
        if current is not None and manifest.version == current.version and kind == "delta":
            return Received(None, f"already hold v{manifest.version}")
        self._pending[kind] = _Pending(manifest, opened.header)
        return self._try_assemble(kind, current)

    def _chunk(self, chunk: Chunk, topic_sha: str | None, current: StoredModel | None) -> Received:
        digest = hashlib.sha256(chunk.data).digest()
        if digest != chunk.sha256 or (topic_sha is not None and digest.hex() != topic_sha):
            raise FedmqError(Reason.HASH_MISMATCH, "chunk data does not match its hash")
        if digest not in self._chunks:
            self._chunks[digest] = chunk.data
            self._cached_bytes += len(chunk.data)
            self._evict()
        for kind in list(self._pending):
            received = self._try_assemble(kind, current)
            if received.model is not None:
                return received
        return Received(None, "chunk cached")

    def _try_assemble(self, kind: str, current: StoredModel | None) -> Received:
        pending = self._pending.get(kind)
        if pending is None:
            return Received(None, "no manifest")
        manifest = pending.manifest
        have = sum(1 for c in manifest.chunks if c in self._chunks)
        if have < len(manifest.chunks):
            return Received(None, f"chunked v{manifest.version}: {have}/{len(manifest.chunks)}")
        del self._pending[kind]
        data = b"".join(self._chunks[c] for c in manifest.chunks)
        for c in set(manifest.chunks):
            self._cached_bytes -= len(self._chunks.pop(c))
        if len(data) != manifest.total_size or hashlib.sha256(data).digest() != manifest.sha256:
            raise FedmqError(Reason.HASH_MISMATCH, f"chunked v{manifest.version} reassembly")
        return self._message(kind, self._inner(data, pending), current, self._big_limits)

    def _inner(self, data: bytes, pending: _Pending) -> Opened:
        """The reassembled bytes: a complete signed envelope of the inner message, or its raw
        body (authenticated by the signed manifest's SHA-256)."""
        try:
            split(data, self._big_limits)
        except DecodeError:
            h = pending.header
            return Opened(Header(h.v, pending.manifest.inner_type, h.fed, h.sender, h.seq,
                                 h.ts_ms), data)
        opened = self._keys.verify(data, self._big_limits)
        check_header(opened.header, fed=self._fed, sender=ORCHESTRATOR_SENDER,
                     now_ms=int(self._clock() * 1000), limits=self._limits, recipient="")
        return opened

    def _evict(self) -> None:
        """Drop the oldest chunks beyond the cache cap, sparing those a pending manifest
        still needs while they fit."""
        wanted = {c for p in self._pending.values() for c in p.manifest.chunks}
        for digest in list(self._chunks):
            if self._cached_bytes <= self._cache_cap:
                return
            if digest not in wanted:
                self._cached_bytes -= len(self._chunks.pop(digest))
        while self._cached_bytes > self._cache_cap and self._chunks:
            _, data = self._chunks.popitem(last=False)
            self._cached_bytes -= len(data)
