"""What a secure bucket's members are told when they are tasked (``Task.bucket``).

Everything a member derives — its neighbours, its Shamir point, the ring width, its weight —
follows from this one value, so every member and the orchestrator derive the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from .errors import Problem, SecAggError
from .graph import holders, neighbour_graph, share_xs

__all__ = ["BucketMember", "BucketSpec"]

MAX_MEMBERS = 1024


@dataclass(frozen=True, slots=True)
class BucketMember:
    id: str
    seal_key: bytes
    """The member's X25519 sealing key: its registered Ed25519 key in Curve25519 form (so it
    is vouched for by the device's identity and rotates with it)."""

    def __post_init__(self) -> None:
        if len(self.seal_key) != 32:
            raise SecAggError(Problem.BAD_PARAMETER, f"sealing key of {self.id} is not 32 bytes")


@dataclass(frozen=True, slots=True)
class BucketSpec:
    bucket_id: str
    members: list[BucketMember]
    threshold: int
    """Shares needed to rebuild a secret, and the least number of survivors."""
    degree: int
    """Neighbours per member in the Harary graph (``n − 1``: complete, plain SecAgg)."""
    bits: int
    """Ring width: every value is mod ``2^bits``."""
    scale: float
    """Quantisation: a clipped coordinate ``v`` becomes about ``v · weight · scale``."""
    clip_norm: float
    weight_cap: float
    weight_unit: float
    """Samples per unit of weight: a member's weight is ``min(samples / unit, cap)``."""
    noise_variance: float = 0.0
    """Central noise variance in ring units that any ``threshold`` members' sum carries."""
    deadline_ms: int = 0
    """The input stage closes then, with whatever inputs are in."""
    expires_ms: int = 0
    """The bucket is over by then whatever happened (a member that never heard its end
    forgets it); 0: never."""

    def __post_init__(self) -> None:
        ids = [m.id for m in self.members]
        if not 2 <= len(ids) <= MAX_MEMBERS or len(set(ids)) != len(ids):
            raise SecAggError(Problem.BAD_PARAMETER, f"{len(ids)} members (distinct, 2..1024)")
        if not 1 <= self.threshold <= len(ids):
            raise SecAggError(Problem.BAD_PARAMETER, f"threshold {self.threshold}")
        if not 1 <= self.bits <= 32:
            raise SecAggError(Problem.BAD_PARAMETER, f"ring width {self.bits}")
        for name in ("scale", "clip_norm", "weight_cap", "weight_unit"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SecAggError(Problem.BAD_PARAMETER, f"{name} {value} is not > 0")
        if not (math.isfinite(self.noise_variance) and self.noise_variance >= 0):
            raise SecAggError(Problem.BAD_PARAMETER, f"noise variance {self.noise_variance}")
        graph = self.graph
        if any(len(holders(graph, m)) < self.threshold for m in ids):
            raise SecAggError(Problem.BAD_PARAMETER,
                              f"threshold {self.threshold} exceeds a member's holders")

    @property
    def graph(self) -> dict[str, tuple[str, ...]]:
        return _graph(self.bucket_id, tuple(m.id for m in self.members), self.degree)

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.members]

    def seal_key(self, member: str) -> bytes:
        for m in self.members:
            if m.id == member:
                return m.seal_key
        raise SecAggError(Problem.BAD_PARAMETER, f"{member} is not in {self.bucket_id}")

    def holders(self, member: str) -> tuple[str, ...]:
        return holders(self.graph, member)

    def xs(self) -> dict[str, int]:
        return share_xs(self.ids)

    def weight(self, num_samples: int) -> float:
        return min(max(num_samples, 0) / self.weight_unit, self.weight_cap)


@lru_cache(maxsize=64)
def _graph(bucket: str, ids: tuple[str, ...], degree: int) -> dict[str, tuple[str, ...]]:
    return neighbour_graph(bucket, ids, degree)
