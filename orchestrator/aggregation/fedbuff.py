"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022).

Accepted updates wait in the store's buffer; once enough are there (the service's cadence, see
:mod:`orchestrator.versions.cadence`) they are aggregated. Update ``i``, trained on version
``tau_i`` while the server is at ``t``, weighs ``n_i * s(t - tau_i)``; one staler than
``max_staleness`` is dropped (reason ``stale``), as is one whose delta does not fit the model.
The result is their weighted mean; wrappers (:mod:`.wrappers`) clip, reduce robustly and step
the server optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.errors import Reason

from ._combine import mean_result, screen
from .staleness import Polynomial
from .strategy import AggregateResult, StalenessFn, UpdateLike

__all__ = ["FedBuff"]


@dataclass(eq=False)
class FedBuff:
    staleness_fn: StalenessFn = field(default_factory=Polynomial)
    max_staleness: int | None = None

    def __post_init__(self) -> None:
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness}")

    def aggregate(
        self,
        global_params: Mapping[str, np.ndarray],
        version: int,
        updates: Sequence[UpdateLike],
    ) -> AggregateResult:
        """The staleness-weighted mean of every usable update in ``updates``."""
        shapes = {name: tuple(p.shape) for name, p in global_params.items()}
        used: list[UpdateLike] = []
        weights: dict[int, float] = {}
        staleness: dict[int, int] = {}
        dropped: dict[int, str] = {}
        seen: set[int] = set()
        for u in updates:
            if u.update_id in seen:
                continue  # the same update listed twice counts once (its first listing)
            seen.add(u.update_id)
            s = version - u.base_version
            reason = screen(u, shapes)
            if reason is None and s < 0:
                reason = Reason.UNKNOWN_VERSION.value  # trained on a version not yet made
            elif reason is None and self.max_staleness is not None and s > self.max_staleness:
                reason = Reason.STALE.value
            if reason is not None:
                dropped[u.update_id] = reason
                continue
            w = u.num_samples * float(self.staleness_fn(s))
            if not (math.isfinite(w) and w > 0):
                dropped[u.update_id] = Reason.STALE.value
                continue
            used.append(u)
            weights[u.update_id] = w
            staleness[u.update_id] = s
        return mean_result(global_params, used, weights, staleness, dropped)
