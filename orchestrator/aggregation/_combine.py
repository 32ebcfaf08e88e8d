"""The step both strategies share: clip, reduce, apply the server optimizer, report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from schemas.errors import Reason

from .reducers import clip_by_norm, coordinate_median, global_norm, trimmed_mean, weighted_mean
from .strategy import AggregateResult, Params, ReducerName, ServerOptimizer, UpdateLike
from .validation import check_delta

REDUCERS: tuple[ReducerName, ...] = ("mean", "median", "trimmed_mean")


def screen(update: UpdateLike, expected_shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why ``update`` cannot take part at all (independent of staleness), or None."""
    if update.num_samples <= 0:
        return Reason.INVALID_FIELD.value
    return check_delta(update.delta, expected_shapes)


def combine(
    global_params: Mapping[str, np.ndarray],
    used: Sequence[UpdateLike],
    weights: Mapping[int, float],
    staleness: Mapping[int, int],
    dropped: Mapping[int, str],
    *,
    reducer: ReducerName,
    trim_fraction: float,
    clip_norm: float | None,
    optimizer: ServerOptimizer,
) -> AggregateResult:
    if not used:
        return AggregateResult(params=None, delta=None, delta_norm=0.0, used_ids=(),
                               dropped=dict(dropped))
    norms: dict[int, float] = {}
    scales: dict[int, float] = {}
    deltas: list[Mapping[str, np.ndarray]] = []
    for u in used:
        norms[u.update_id] = global_norm(u.delta)
        if clip_norm is None:
            deltas.append(u.delta)
            scales[u.update_id] = 1.0
        else:
            clipped, scales[u.update_id] = clip_by_norm(u.delta, clip_norm)
            deltas.append(clipped)
    aggregated: Params
    if reducer == "mean":
        aggregated = weighted_mean(deltas, [weights[u.update_id] for u in used])
    elif reducer == "median":
        aggregated = coordinate_median(deltas)
    else:
        aggregated = trimmed_mean(deltas, trim_fraction)
    # keep the global model's tensor order whatever order the devices sent
    aggregated = {name: aggregated[name] for name in global_params}
    new_params = optimizer.step(global_params, aggregated)
    return AggregateResult(
        params=new_params,
        delta=aggregated,
        delta_norm=global_norm(aggregated),
        used_ids=tuple(u.update_id for u in used),
        weights={u.update_id: weights[u.update_id] for u in used},
        staleness={u.update_id: staleness[u.update_id] for u in used},
        update_norms=norms,
        clip_scales=scales,
        dropped=dict(dropped),
    )


def check_options(reducer: str, trim_fraction: float, clip_norm: float | None) -> None:
    if reducer not in REDUCERS:
        raise ValueError(f"unknown reducer {reducer!r} (choose from {list(REDUCERS)})")
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}")
