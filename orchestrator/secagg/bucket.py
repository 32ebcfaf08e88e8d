"""One secure bucket as the orchestrator sees it: a state machine over the members' stages.

Phases: ``keys`` (members advertise mask keys and deal sealed shares) → ``inputs`` (the
relay went out; masked inputs arrive) → ``unmask`` (the survivor list went out; shares
arrive) → ``done`` or ``abandoned``. Each ``on_*`` judges one member's message whole, returns
``True`` (kept) or ``False`` (an identical copy: a duplicate), or raises
:class:`~schemas.secagg.SecAggError` — nothing is kept from a refused message.

The state holds nothing that alone reveals a member's update: the masked inputs (uniform
without the masks), sealed share pairs (the server cannot open them), and, in ``unmask``, one
kind of share per owner. The masked inputs are kept apart (:attr:`BucketState.inputs` holds
only their metadata), since the store writes them once, not with every change.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas._convert import from_wire, to_wire
from schemas.limits import DEFAULT_LIMITS
from schemas.secagg import (
    Problem,
    Released,
    SecAggError,
    Share,
    ShareKind,
    dequantize,
    rebuild,
    unmask,
)
from schemas.secagg.sealing import MAX_SEALED_BYTES
from schemas.secagg.spec import BucketSpec
from schemas.secagg.wire import (
    SecAggInput,
    SecAggKeys,
    SecAggRelay,
    SecAggReveal,
    SecAggUnmask,
    unpack_ring,
)

__all__ = ["BucketState", "InputMeta", "Phase", "Unmasked"]


class Phase(StrEnum):
    KEYS = "keys"
    INPUTS = "inputs"
    UNMASK = "unmask"
    DONE = "done"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class InputMeta:
    weight: float
    num_samples: int
    digest: bytes
    task_id: str = ""
    train_loss: float | None = None
    local_steps: int = 0


@dataclass(frozen=True, slots=True)
class Unmasked:
    """A finished bucket's sum: the weighted sum of its survivors' clipped deltas (floats)."""

    total: npt.NDArray[np.float64]
    weight: float
    num_samples: int
    survivors: list[str]


def _digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(len(p).to_bytes(8, "big") + p)
    return h.digest()


@dataclass
class BucketState:
    spec: BucketSpec
    base_version: int
    n_params: int
    created_ms: int
    phase: Phase = Phase.KEYS
    keys: dict[str, bytes] = field(default_factory=dict)
    sealed: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """Owner → holder → the pair the owner sealed to the holder."""
    advertised: list[str] = field(default_factory=list)
    """Who is in the bucket after the key stage (fixed by :meth:`close_keys`)."""
    inputs: dict[str, InputMeta] = field(default_factory=dict)
    request: int = 0
    survivors: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reveals: dict[str, list[tuple[str, str, bytes]]] = field(default_factory=dict)
    """Holder → its answer: ``(owner, kind, share bytes)``."""
    reason: str = ""

    @property
    def bucket_id(self) -> str:
        return self.spec.bucket_id

    @property
    def open(self) -> bool:
        return self.phase not in (Phase.DONE, Phase.ABANDONED)

    def _expect(self, phase: Phase, member: str) -> None:
        if member not in self.spec.ids:
            raise SecAggError(Problem.BAD_PARAMETER, f"{member} is not in {self.bucket_id}")
        if self.phase is not phase:
            raise SecAggError(Problem.BAD_PARAMETER,
                              f"{self.bucket_id} is in its {self.phase.value} stage")

    # -- keys ----------------------------------------------------------------------------------

    def on_keys(self, member: str, msg: SecAggKeys) -> bool:
        if self.keys.get(member) == msg.mask_public and self.sealed[member] == msg.shares:
            return False  # a copy, in whatever stage
        self._expect(Phase.KEYS, member)
        if member in self.keys:
            raise SecAggError(Problem.BAD_SHARE, f"{member} advertised twice")
        if len(msg.mask_public) != 32:
            raise SecAggError(Problem.BAD_PARAMETER, "a mask key is not 32 bytes")
        if set(msg.shares) != set(self.spec.holders(member)):
            raise SecAggError(Problem.BAD_SHARE, "shares for other holders than the member's")
        if any(len(s) > MAX_SEALED_BYTES for s in msg.shares.values()):
            raise SecAggError(Problem.BAD_SHARE, "an oversized sealed share")
        self.keys[member] = msg.mask_public
        self.sealed[member] = dict(msg.shares)
        return True

    @property
    def keys_complete(self) -> bool:
        return len(self.keys) == len(self.spec.ids)

    def close_keys(self) -> dict[str, SecAggRelay]:
        """Fix who is in (advertised, with at least ``threshold`` advertised holders) and the
        relay each of them gets; below the threshold the bucket is abandoned (no relays)."""
        if self.phase is not Phase.KEYS:
            raise SecAggError(Problem.BAD_PARAMETER, f"{self.bucket_id} closed its keys")
        t, inside = self.spec.threshold, set(self.keys)
        while True:  # a member whose secrets cannot be rebuilt cannot take part
            short = {m for m in inside if len(set(self.spec.holders(m)) & inside) < t}
            if not short:
                break
            inside -= short
        if len(inside) < t:
            self.abandon(f"{len(inside)} members advertised keys, threshold {t}")
            return {}
        self.advertised = sorted(inside)
        self.phase = Phase.INPUTS
        return {m: self.relay_for(m) for m in self.advertised}

    def relay_for(self, member: str) -> SecAggRelay:
        """What ``member`` is relayed: its in-neighbours' mask keys and the pairs they sealed
        to it (the same every time it is asked, so a member that missed it can get it again)."""
        inside = set(self.advertised)
        peers = [h for h in self.spec.holders(member) if h in inside]
        return SecAggRelay(self.bucket_id, {h: self.keys[h] for h in peers},
                           {o: self.sealed[o][member] for o in peers})

    # -- inputs --------------------------------------------------------------------------------

    def on_input(self, member: str, msg: SecAggInput) -> tuple[bool, npt.NDArray[np.uint32]]:
        """Judge a masked input; returns (kept, its ring values)."""
        digest = _digest(msg.values, repr((msg.weight, msg.num_samples)).encode())
        known = self.inputs.get(member)
        if known is not None and known.digest == digest:
            return False, np.zeros(0, dtype=np.uint32)
        self._expect(Phase.INPUTS, member)
        if member not in self.advertised:
            raise SecAggError(Problem.BAD_PARAMETER, f"{member} did not advertise keys in time")
        if known is not None:
            raise SecAggError(Problem.BAD_SHARE, f"{member} sent a second masked input")
        if msg.n != self.n_params:
            raise SecAggError(Problem.BAD_PARAMETER,
                              f"a masked input of {msg.n} coordinates, the model has "
                              f"{self.n_params}")
        if msg.num_samples < 1 or not math.isclose(msg.weight, self.spec.weight(msg.num_samples),
                                                   rel_tol=1e-9, abs_tol=1e-12):
            raise SecAggError(Problem.BAD_PARAMETER,
                              f"weight {msg.weight} does not follow from {msg.num_samples} "
                              "samples")
        values = unpack_ring(msg.values, msg.n, self.spec.bits)
        loss = msg.train_loss if math.isfinite(msg.train_loss) else None
        self.inputs[member] = InputMeta(msg.weight, msg.num_samples, digest, msg.task_id, loss,
                                        msg.local_steps)
        return True, values

    @property
    def inputs_complete(self) -> bool:
        return self.phase is Phase.INPUTS and len(self.inputs) == len(self.advertised)

    def close_inputs(self) -> SecAggUnmask | None:
        """The survivors are those whose input is in; below the threshold, abandon."""
        if self.phase is not Phase.INPUTS:
            raise SecAggError(Problem.BAD_PARAMETER, f"{self.bucket_id} closed its inputs")
        survivors = sorted(self.inputs)
        if len(survivors) < self.spec.threshold:
            self.abandon(f"{len(survivors)} masked inputs, threshold {self.spec.threshold}")
            return None
        alive = set(survivors)
        graph = self.spec.graph
        self.dropped = sorted(m for m in self.advertised
                              if m not in alive and alive & set(graph[m]))
        self.survivors = survivors
        self.request += 1
        self.phase = Phase.UNMASK
        return self.unmask_request()

    def unmask_request(self) -> SecAggUnmask:
        return SecAggUnmask(self.bucket_id, self.request, list(self.survivors),
                            list(self.dropped))

    # -- unmasking -----------------------------------------------------------------------------

    def on_reveal(self, holder: str, msg: SecAggReveal) -> bool:
        answer = sorted((s.owner, s.kind, s.share) for s in msg.shares)
        if self.reveals.get(holder) == answer and msg.request == self.request:
            return False
        self._expect(Phase.UNMASK, holder)
        if msg.request != self.request:
            raise SecAggError(Problem.BAD_SHARE, f"an answer to request {msg.request}, the "
                              f"current one is {self.request}")
        if holder in self.reveals:
            raise SecAggError(Problem.SHARE_CONFLICT, f"{holder} answered twice")
        if holder not in self.advertised:
            raise SecAggError(Problem.BAD_PARAMETER, f"{holder} holds no shares here")
        x = self.spec.xs()[holder]
        alive, gone = set(self.survivors), set(self.dropped)
        seen: set[str] = set()
        for owner, kind, raw in answer:
            wanted = (ShareKind.SELF_MASK.value if owner in alive
                      else ShareKind.MASK_KEY.value if owner in gone else None)
            if kind != wanted or owner in seen or holder not in self.spec.holders(owner):
                raise SecAggError(Problem.BAD_SHARE, f"a {kind} share of {owner} was not asked")
            if Share.from_bytes(raw).x != x:
                raise SecAggError(Problem.BAD_SHARE, f"a share of {owner} at another point")
            seen.add(owner)
        self.reveals[holder] = answer
        return True

    def _counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for answer in self.reveals.values():
            for owner, _, _ in answer:
                counts[owner] = counts.get(owner, 0) + 1
        return counts

    @property
    def reveals_complete(self) -> bool:
        if self.phase is not Phase.UNMASK:
            return False
        counts = self._counts()
        return all(counts.get(m, 0) >= self.spec.threshold for m in self.survivors + self.dropped)

    def finish(self, masked: dict[str, npt.NDArray[np.uint32]]) -> Unmasked:
        """The survivors' sum, from their masked inputs and the shares in."""
        if not self.reveals_complete:
            raise SecAggError(Problem.BELOW_THRESHOLD, "too few shares to unmask")
        if set(masked) != set(self.survivors):
            raise SecAggError(Problem.MISSING_SECRET, "the masked inputs are not the survivors'")
        released = [[Released(o, ShareKind(k), Share.from_bytes(raw)) for o, k, raw in answer]
                    for answer in self.reveals.values()]
        secrets = rebuild(released, threshold=self.spec.threshold)
        inside = set(self.advertised)
        graph = {m: tuple(p for p in self.spec.graph[m] if p in inside) for m in inside}
        total = unmask(masked, bits=self.spec.bits, bucket=self.bucket_id, graph=graph,
                       public_keys=self.keys, self_seeds=secrets.self_seeds,
                       dropped_keys=secrets.dropped_keys, threshold=self.spec.threshold)
        floats = dequantize(total, self.spec.bits, self.spec.scale)
        weight = sum(self.inputs[m].weight for m in self.survivors)
        samples = sum(self.inputs[m].num_samples for m in self.survivors)
        self._check_norm(floats, weight)
        self.phase = Phase.DONE
        self.reveals = {}  # the shares have done their work: keep none
        return Unmasked(floats, weight, samples, list(self.survivors))

    def _check_norm(self, total: npt.NDArray[np.float64], weight: float) -> None:
        """Members clip before they quantise, so the sum's norm is at most the weight times
        the clip norm, plus rounding (under one unit per member and coordinate) and noise (six
        of its standard deviations): a member that masked anything else shows here."""
        n, d = len(self.survivors), total.size
        noise_sd = math.sqrt(n * self.spec.noise_variance / self.spec.threshold)
        slack = math.sqrt(d) * (n + 6 * noise_sd) / self.spec.scale
        bound = weight * self.spec.clip_norm + slack
        norm = float(np.linalg.norm(total))
        if not norm <= bound:
            raise SecAggError(Problem.NORM_BOUND, f"the sum's norm {norm:.4g} exceeds "
                              f"{bound:.4g}, the most clipped inputs can make")

    def abandon(self, reason: str) -> None:
        self.phase = Phase.ABANDONED
        self.reason = reason
        self.reveals = {}

    @property
    def members_in(self) -> list[str]:
        return self.advertised or self.spec.ids

    # -- durable form --------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "spec": to_wire(self.spec), "base": self.base_version, "n": self.n_params,
            "created": self.created_ms, "phase": self.phase.value, "keys": self.keys,
            "sealed": self.sealed, "advertised": self.advertised,
            "inputs": {m: to_wire(i) for m, i in self.inputs.items()},
            "request": self.request, "survivors": self.survivors, "dropped": self.dropped,
            "reveals": {h: [list(a) for a in ans] for h, ans in self.reveals.items()},
            "reason": self.reason,
        }

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> BucketState:
        spec = from_wire(BucketSpec, s["spec"], DEFAULT_LIMITS)
        return cls(spec, int(s["base"]), int(s["n"]), int(s["created"]), Phase(s["phase"]),
                   dict(s["keys"]), {o: dict(h) for o, h in s["sealed"].items()},
                   list(s["advertised"]),
                   {m: from_wire(InputMeta, i, DEFAULT_LIMITS) for m, i in s["inputs"].items()},
                   int(s["request"]), list(s["survivors"]), list(s["dropped"]),
                   {h: [(str(o), str(k), bytes(r)) for o, k, r in ans]
                    for h, ans in s["reveals"].items()}, str(s["reason"]))
