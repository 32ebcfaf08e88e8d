"""A bucket's parameters from the ``[secure_aggregation]`` settings: degree, threshold, scale,
noise and the ring width that keeps the sum from wrapping."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.config import SecureAggregationConfig
from schemas.secagg import bits_needed, noise_bound, suggested_degree
from schemas.secagg.spec import BucketMember, BucketSpec

__all__ = ["BucketPlan"]


@dataclass(frozen=True, slots=True)
class BucketPlan:
    config: SecureAggregationConfig
    clip_norm: float
    noise_multiplier: float = 0.0
    """Central DP: the bucket sum carries Gaussian-equivalent noise of std ``z · clip · cap``
    (in delta units) whenever at least ``threshold`` members survive."""

    def degree(self, n: int) -> int:
        wanted = self.config.degree or suggested_degree(n)
        return max(1, min(n - 1, wanted))

    def threshold(self, n: int) -> int:
        holders = self.degree(n) + 1  # an odd n with odd degree gives one member k + 2
        return max(2 if n > 2 else 1, math.ceil(self.config.threshold * holders))

    @property
    def scale(self) -> float:
        return self.config.value_bound / self.clip_norm

    def noise_variance(self) -> float:
        """In ring units: sensitivity ``clip · cap · scale`` times the noise multiplier."""
        sigma = self.noise_multiplier * self.config.value_bound * self.config.weight_cap
        return sigma * sigma

    def bits(self, n: int) -> int:
        noise = noise_bound(self.noise_variance(), self.threshold(n))
        return bits_needed(n, self.config.value_bound, self.config.weight_cap, noise)

    def spec(self, bucket_id: str, seal_keys: Mapping[str, bytes], deadline_ms: int,
             expires_ms: int = 0) -> BucketSpec:
        n = len(seal_keys)
        members = [BucketMember(m, seal_keys[m]) for m in sorted(seal_keys)]
        return BucketSpec(bucket_id, members, threshold=self.threshold(n),
                          degree=self.degree(n), bits=self.bits(n), scale=self.scale,
                          clip_norm=self.clip_norm, weight_cap=self.config.weight_cap,
                          weight_unit=self.config.weight_unit,
                          noise_variance=self.noise_variance(), deadline_ms=deadline_ms,
                          expires_ms=expires_ms)
