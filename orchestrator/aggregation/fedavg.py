"""Synchronous FedAvg (McMahan et al. 2017): the sample-weighted mean of one round's deltas,
applied through the server optimizer. Rounds, quorum and deadlines are the service's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.errors import Reason

from ._combine import check_options, combine, screen
from .optimizers import ServerSGD
from .strategy import AggregateResult, ServerOptimizer, UpdateLike

__all__ = ["FedAvg"]


@dataclass(eq=False)
class FedAvg:
    optimizer: ServerOptimizer = field(default_factory=ServerSGD)
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        check_options("mean", 0.0, self.clip_norm)

    def aggregate(
        self,
        global_params: Mapping[str, np.ndarray],
        updates: Sequence[UpdateLike],
        round_version: int | None = None,
    ) -> AggregateResult:
        """Weight each update by its sample count. With ``round_version``, an update trained on
        any other version is dropped (``stale``): a synchronous round mixes no versions."""
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
            if reason is None and round_version is not None and u.base_version != round_version:
                reason = Reason.STALE.value
            if reason is not None:
                dropped[u.update_id] = reason
                continue
            used.append(u)
            weights[u.update_id] = float(u.num_samples)
        staleness = {u.update_id: 0 for u in used}
        return combine(
            global_params, used, weights, staleness, dropped,
            reducer="mean", trim_fraction=0.0, clip_norm=self.clip_norm,
            optimizer=self.optimizer,
        )
