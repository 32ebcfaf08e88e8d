"""FedBuff and FedAvg: staleness weights, drops as data, the wrappers (clipping, robust
reducers, the server step), untouched inputs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from orchestrator.aggregation import (
    BufferedUpdate,
    Clipped,
    FedAdam,
    FedAvg,
    FedBuff,
    Polynomial,
    RobustReduction,
    ServerSGD,
    ServerStep,
)
from orchestrator.store import BufferedEntry

GLOBAL = {"w": np.zeros(2, np.float32)}


def _u(uid: int, base: int, n: int, w: list[float]) -> BufferedUpdate:
    return BufferedUpdate(uid, f"dev-{uid}", base, n, {"w": np.array(w, np.float32)})


def test_weights_by_samples_and_staleness_and_drops_the_rest() -> None:
    fb = ServerStep(FedBuff(staleness_fn=Polynomial(0.5), max_staleness=4), ServerSGD())
    updates = [
        _u(1, 10, 10, [1.0, 0.0]),  # s = 0: weight 10 * 1
        _u(2, 7, 20, [0.0, 1.0]),  # s = 3: weight 20 * (1 + 3) ** -0.5 = 10
        _u(3, 5, 5, [9.0, 9.0]),  # s = 5 > 4
        _u(4, 11, 5, [9.0, 9.0]),  # trained on a version that does not exist yet
        BufferedUpdate(5, "dev-5", 10, 5, {"w": np.zeros(3, np.float32)}),
        _u(6, 10, 5, [np.nan, 0.0]),
        _u(7, 10, 0, [9.0, 9.0]),
        _u(1, 10, 10, [1.0, 0.0]),  # listed twice: counts once
    ]
    before = copy.deepcopy((GLOBAL, updates))
    result = fb.aggregate(GLOBAL, 10, updates)
    assert result.used_ids == (1, 2)
    assert result.weights == {1: pytest.approx(10.0), 2: pytest.approx(10.0)}
    assert result.staleness == {1: 0, 2: 3}
    assert result.dropped == {3: "stale", 4: "unknown_version", 5: "shape_mismatch",
                              6: "non_finite", 7: "invalid_field"}
    assert result.params is not None and result.delta is not None
    assert result.delta["w"].tolist() == [0.5, 0.5]  # (10 [1, 0] + 10 [0, 1]) / 20
    assert result.params["w"].tolist() == [0.5, 0.5]  # server lr 1 onto zeros
    assert result.delta_norm == pytest.approx(math.sqrt(0.5))
    assert result.update_norms == {1: 1.0, 2: 1.0}
    assert GLOBAL["w"].tolist() == before[0]["w"].tolist()
    for u, b in zip(updates, before[1], strict=True):
        assert u.delta["w"].tobytes() == b.delta["w"].tobytes()


def test_nothing_usable_is_a_result_not_an_error() -> None:
    opt = FedAdam(lr=0.1)
    fb = ServerStep(FedBuff(max_staleness=0), opt)
    result = fb.aggregate(GLOBAL, 3, [_u(1, 1, 10, [1.0, 1.0])])
    assert (result.params, result.used_ids, result.dropped) == (None, (), {1: "stale"})
    assert not result.has_update and opt.steps == 0
    assert fb.aggregate(GLOBAL, 3, []).used_ids == ()


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        FedBuff(max_staleness=-1)
    with pytest.raises(ValueError):
        RobustReduction(FedBuff(), "krum")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RobustReduction(FedBuff(), "trimmed_mean", trim_fraction=0.5)
    with pytest.raises(ValueError):
        Clipped(FedBuff(), 0.0)


def test_clipping_bounds_each_update() -> None:
    fb = Clipped(FedBuff(), 0.5)
    result = fb.aggregate(GLOBAL, 0, [_u(1, 0, 1, [3.0, 4.0])])
    assert result.update_norms == {1: pytest.approx(5.0)}
    assert result.clip_scales == {1: pytest.approx(0.1)}
    assert result.delta is not None
    assert result.delta["w"].tolist() == pytest.approx([0.3, 0.4])


@pytest.mark.parametrize("reducer", ["median", "trimmed_mean"])
def test_robust_reducers_ignore_a_scaled_outlier(reducer: str) -> None:
    fb = RobustReduction(FedBuff(), reducer, trim_fraction=0.2)  # type: ignore[arg-type]
    honest = [_u(i, 0, 10, [1.0 + 0.05 * (i - 3), -1.0]) for i in range(1, 6)]
    liar = _u(6, 0, 10_000, [10.0, -10.0])  # 10x the delta, claiming 1000x the samples
    result = fb.aggregate(GLOBAL, 0, [*honest, liar])
    assert result.delta is not None
    assert result.delta["w"].tolist() == pytest.approx([1.025, -1.0])
    mean = FedBuff().aggregate(GLOBAL, 0, [*honest, liar])
    assert mean.delta is not None and mean.delta["w"][0] > 9.0  # the mean is captured


def test_adaptive_optimizer_advances_once_per_aggregate() -> None:
    opt = FedAdam(lr=0.1)
    fb = ServerStep(FedBuff(), opt)
    fb.aggregate(GLOBAL, 0, [_u(1, 0, 1, [0.5, -0.25])])
    assert opt.steps == 1


def test_store_rows_plug_in_directly() -> None:
    entry = BufferedEntry(update_id=9, sender="dev", seq=1, base_version=2, num_samples=4,
                          received_ms=0, norm=None, meta={},
                          delta={"w": np.array([1.0, 2.0], np.float32)})
    result = FedBuff().aggregate(GLOBAL, 3, [entry])
    assert result.used_ids == (9,) and result.weights[9] == pytest.approx(4 / math.sqrt(2))


def test_fedavg_weights_by_samples_within_the_round() -> None:
    avg = ServerStep(FedAvg(), ServerSGD())
    updates = [_u(1, 5, 1, [4.0, 0.0]), _u(2, 5, 3, [0.0, 4.0]), _u(3, 4, 100, [9.0, 9.0])]
    result = avg.aggregate(GLOBAL, 5, updates)
    assert result.used_ids == (1, 2) and result.dropped == {3: "stale"}
    assert result.weights == {1: 1.0, 2: 3.0}
    assert result.params is not None
    assert result.params["w"].tolist() == [1.0, 3.0]  # (1 [4, 0] + 3 [0, 4]) / 4
    older = avg.aggregate(GLOBAL, 4, updates)  # another round: only its own version counts
    assert older.used_ids == (3,)


@pytest.mark.parametrize("reducer", ["median", "trimmed_mean"])
def test_robust_reducers_see_the_clipped_deltas(reducer: str) -> None:
    strategy = Clipped(RobustReduction(FedBuff(), reducer, 0.2), 1.0)  # type: ignore[arg-type]
    result = strategy.aggregate(GLOBAL, 0, [_u(i, 0, 1, [3.0, 4.0]) for i in range(1, 6)])
    assert result.delta is not None
    assert result.delta["w"].tolist() == pytest.approx([0.6, 0.8])
    assert result.clip_scales == {i: pytest.approx(0.2) for i in range(1, 6)}


def test_a_non_finite_update_is_dropped_not_clipped() -> None:
    result = Clipped(FedBuff(), 1.0).aggregate(
        GLOBAL, 0, [_u(1, 0, 1, [np.inf, 0.0]), _u(2, 0, 1, [0.5, 0.0])])
    assert result.used_ids == (2,) and result.dropped == {1: "non_finite"}
