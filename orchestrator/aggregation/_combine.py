"""What both algorithms share: which updates can take part at all, and the weighted mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from schemas.errors import Reason

from .reducers import global_norm, weighted_mean
from .strategy import AggregateResult, Params, UpdateLike
from .validation import check_delta


def screen(update: UpdateLike, expected_shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why ``update`` cannot take part at all (independent of staleness), or None."""
    if update.num_samples <= 0:
        return Reason.INVALID_FIELD.value
    return check_delta(update.delta, expected_shapes)


def in_model_order(global_params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]
                   ) -> Params:
    """``delta`` with the global model's tensor order, whatever order the devices sent."""
    return {name: np.asarray(delta[name]) for name in global_params}


def mean_result(
    global_params: Mapping[str, np.ndarray],
    used: Sequence[UpdateLike],
    weights: Mapping[int, float],
    staleness: Mapping[int, int],
    dropped: Mapping[int, str],
) -> AggregateResult:
    """The weighted mean of ``used`` as a result (no update usable: an empty one)."""
    if not used:
        return AggregateResult(delta=None, delta_norm=0.0, used_ids=(), dropped=dict(dropped))
    aggregated = in_model_order(global_params, weighted_mean(
        [u.delta for u in used], [weights[u.update_id] for u in used]))
    return AggregateResult(
        delta=aggregated,
        delta_norm=global_norm(aggregated),
        used_ids=tuple(u.update_id for u in used),
        weights={u.update_id: weights[u.update_id] for u in used},
        staleness={u.update_id: staleness[u.update_id] for u in used},
        update_norms={u.update_id: global_norm(u.delta) for u in used},
        clip_scales={u.update_id: 1.0 for u in used},
        dropped=dict(dropped),
    )
