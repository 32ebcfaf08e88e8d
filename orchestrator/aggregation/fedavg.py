"""Synchronous FedAvg (McMahan et al. 2017): the sample-weighted mean of one round's deltas.
Rounds, quorum and deadlines are the service's (:mod:`orchestrator.versions.cadence`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from schemas.errors import Reason

from ._combine import mean_result, screen
from .strategy import AggregateResult, UpdateLike

__all__ = ["FedAvg"]


@dataclass(eq=False)
class FedAvg:
    def aggregate(
        self,
        global_params: Mapping[str, np.ndarray],
        version: int,
        updates: Sequence[UpdateLike],
    ) -> AggregateResult:
        """Weight each update by its sample count. An update trained on any version but
        ``version`` (the round's) is dropped (``stale``): a synchronous round mixes none."""
        shapes = {name: tuple(p.shape) for name, p in global_params.items()}
        used: list[UpdateLike] = []
        weights: dict[int, float] = {}
        dropped: dict[int, str] = {}
        seen: set[int] = set()
        for u in updates:
            if u.update_id in seen:
                continue  # the same update listed twice counts once (its first listing)
            seen.add(u.update_id)
            reason = screen(u, shapes)
            if reason is None and u.base_version != version:
                reason = Reason.STALE.value
            if reason is not None:
                dropped[u.update_id] = reason
                continue
            used.append(u)
            weights[u.update_id] = float(u.num_samples)
        staleness = {u.update_id: 0 for u in used}
        return mean_result(global_params, used, weights, staleness, dropped)
