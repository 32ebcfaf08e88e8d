"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022).

Accepted updates wait in the store's buffer; once ``k`` are there the service passes them to
:meth:`FedBuff.aggregate`. Update ``i``, trained on version ``tau_i`` while the server is at
``t``, weighs ``n_i * s(t - tau_i)``; one staler than ``max_staleness`` is dropped (reason
``stale``), as is one whose delta does not fit the model. The weighted mean (or a robust
reducer) of the survivors goes through the server optimizer to give version ``t + 1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.errors import Reason

from ._combine import check_options, combine, screen
from .optimizers import ServerSGD
from .staleness import Polynomial
from .strategy import AggregateResult, ReducerName, ServerOptimizer, StalenessFn, UpdateLike

__all__ = ["FedBuff"]


@dataclass(eq=False)
class FedBuff:
    k: int
    staleness_fn: StalenessFn = field(default_factory=Polynomial)
    max_staleness: int | None = None
    reducer: ReducerName = "mean"
    trim_fraction: float = 0.1
    clip_norm: float | None = None
    """Clip every delta to this global L2 norm before reducing (None = no clipping)."""
    optimizer: ServerOptimizer = field(default_factory=ServerSGD)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.max_staleness is not None and self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness}")
        check_options(self.reducer, self.trim_fraction, self.clip_norm)

    def ready(self, n_buffered: int) -> bool:
        return n_buffered >= self.k

    def aggregate(
        self,
        global_params: Mapping[str, np.ndarray],
        current_version: int,
        updates: Sequence[UpdateLike],
    ) -> AggregateResult:
        """Aggregate every usable update in ``updates`` into the next global parameters.

        Advances ``optimizer`` when something was aggregated (see :mod:`.optimizers`).
        """
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
            s = current_version - u.base_version
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
        return combine(
            global_params, used, weights, staleness, dropped,
            reducer=self.reducer, trim_fraction=self.trim_fraction, clip_norm=self.clip_norm,
            optimizer=self.optimizer,
        )
