"""Trusted-server DP as a strategy wrapper: clip, weigh uniformly, aggregate, add noise.

    ServerStep(ServerNoise(FedBuff(...), clip_norm=1.0, noise_multiplier=1.0, rng=rng), opt)

The noise goes on the inner strategy's aggregate, before the server optimizer steps, so the
optimizer's moments never see an un-noised aggregate. Every contribution counts as one sample
(DP-FedAvg's uniform weighting): with sample-count weights one data-rich device's share, and
so the noise, would be large. Staleness weights still apply, and the noise is calibrated to
the largest weight share (see :func:`~.noise.server_noise_std`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.aggregation.reducers import clip_by_norm, global_norm
from orchestrator.aggregation.strategy import AggregateResult, Strategy, UpdateLike
from orchestrator.aggregation.wrappers import with_delta

from .noise import add_server_noise

__all__ = ["ServerNoise"]


@dataclass(eq=False)
class ServerNoise:
    inner: Strategy
    clip_norm: float
    noise_multiplier: float
    rng: np.random.Generator

    def aggregate(self, global_params: Mapping[str, np.ndarray], version: int,
                  updates: Sequence[UpdateLike]) -> AggregateResult:
        # the server clips too: the noise is calibrated to clip_norm, whatever a device sent
        prepared: list[UpdateLike] = []
        for u in updates:
            if math.isfinite(global_norm(u.delta)):
                prepared.append(with_delta(u, clip_by_norm(u.delta, self.clip_norm)[0], 1))
            else:
                prepared.append(with_delta(u, u.delta, 1))  # for the inner strategy to drop
        result = self.inner.aggregate(global_params, version, prepared)
        if result.delta is None:
            return result
        weights = [result.weights[uid] for uid in result.used_ids]
        share = max(weights) / sum(weights)
        noised = add_server_noise(
            result.delta, clip_norm=self.clip_norm, noise_multiplier=self.noise_multiplier,
            n_participants=len(weights), rng=self.rng,
            max_weight_share=max(share, 1.0 / len(weights)))
        return dataclasses.replace(result, delta=noised, delta_norm=global_norm(noised))
