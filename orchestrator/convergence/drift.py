"""Drift signals: how each contributing device's update relates to the aggregate it went into
(pure numpy). A device whose updates keep pointing away from the federation (low or negative
cosine) or are far larger than its peers' is drifting: its data or its behaviour changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from orchestrator.aggregation import BufferedUpdate
from orchestrator.aggregation.reducers import cosine, global_norm
from schemas.tensors import Params

__all__ = ["drift_signals"]


def drift_signals(
    updates: Iterable[BufferedUpdate], before: Params, after: Params
) -> dict[str, dict[str, float]]:
    """Per sender: the L2 ``norm`` of its delta and its ``cosine`` to the applied aggregate
    step ``after − before`` (0 when either is zero). A sender with several updates in the
    version gets the mean of each."""
    step = {name: np.subtract(after[name], before[name], dtype=np.float32) for name in before}
    sums: dict[str, list[float]] = {}
    for u in updates:
        if set(u.delta) != set(step):
            continue  # screened out for its shape; nothing to compare
        delta = {name: u.delta[name] for name in step}
        norm = global_norm(delta)
        cos = cosine(delta, step)
        if not (math.isfinite(norm) and math.isfinite(cos)):
            continue
        acc = sums.setdefault(u.sender, [0.0, 0.0, 0.0])
        acc[0] += norm
        acc[1] += cos
        acc[2] += 1
    return {sender: {"norm": n / k, "cosine": c / k} for sender, (n, c, k) in sums.items()}
