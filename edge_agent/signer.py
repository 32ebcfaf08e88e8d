"""The agent's outgoing path: number, sign, seal, and (for updates) commit to the outbox.

Every message the device sends carries the next seq of its one durable counter, reserved
before use (so a crash can skip a seq, never reuse one), and is signed with the device key;
an update is sealed to the orchestrator's key when its task asks, and written to the outbox
with the residual its encoding left behind before anything is sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from schemas import Message, Params, pack

from .clock import Clock, wall_ms
from .errors import OversizedUpdateError
from .orchkeys import OrchestratorKeys
from .outbox import Outbox
from .shared import Offload
from .state import LocalState

__all__ = ["Signer"]


class Signer:
    def __init__(self, state: LocalState, outbox: Outbox, *, device_id: str, fed: str,
                 orchestrator_keys: OrchestratorKeys, clock: Clock, offload: Offload,
                 max_update_bytes: int) -> None:
        self._state = state
        self._outbox = outbox
        self._device_id = device_id
        self._fed = fed
        self._keys = orchestrator_keys  # sealed to its current key, which a rotation changes
        self._clock = clock
        self._offload = offload
        self._max_update_bytes = max_update_bytes

    @property
    def verify_key(self) -> VerifyKey:
        """The device's public key (what ``Enroll`` registers)."""
        return self._state.signing_key.verify_key

    def pack(self, message: Message, seq: int, *, seal: bool = False,
             key: SigningKey | None = None) -> bytes:
        """Sign ``message`` under ``seq`` (thread-safe: CPU only) with ``key`` (default: the
        device key)."""
        return pack(message, key=key or self._state.signing_key, fed=self._fed,
                    sender=self._device_id, seq=seq, ts_ms=wall_ms(self._clock),
                    seal_to=self._keys.seal_key() if seal else None)

    async def sign(self, message: Message) -> bytes:
        """A small message (status, enroll, eval report) under the next seq."""
        return self.pack(message, await self._state.reserve_seq())

    async def enqueue(self, message: Message, *, seal: bool, residual: Params | None = None,
                      values: Mapping[str, Any] | None = None) -> tuple[int, int]:
        """Sign (and seal) ``message`` under the next seq and commit it to the outbox, with
        ``residual`` (an update's) and ``values`` (a secure bucket's session) in the same
        transaction; returns the seq and the envelope's size. ``OversizedUpdateError`` when
        the envelope would not fit in one batch (nothing is committed then)."""
        seq = await self._state.reserve_seq()
        key = self._state.signing_key  # put() re-signs if it rotates while we encode
        envelope = await self._offload.run(self.pack, message, seq, seal=seal, key=key)
        if len(envelope) > self._max_update_bytes:
            raise OversizedUpdateError(
                f"{message.TYPE} of {len(envelope)} bytes exceeds the {self._max_update_bytes}-"
                "byte batch limit; use a compressing codec", device=self._device_id, seq=seq,
                reason="too_large")
        await self._outbox.put(seq, envelope, created_ms=wall_ms(self._clock), residual=residual,
                               signed_with=key, values=values)
        return seq, len(envelope)
