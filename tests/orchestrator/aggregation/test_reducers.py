"""Reducers and norm helpers against hand calculations; robustness; inputs left untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from orchestrator.aggregation import (
    clip_by_norm,
    coordinate_median,
    cosine,
    global_norm,
    trimmed_mean,
    weighted_mean,
)


def _d(w: list[float], b: float) -> dict[str, np.ndarray]:
    return {"w": np.array(w, np.float32), "b": np.array([[b]], np.float32)}


def _assert_same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    for x, y in zip(a, b, strict=True):
        for name in x:
            assert x[name].tobytes() == y[name].tobytes()


def test_weighted_mean_matches_hand_calculation() -> None:
    deltas = [_d([1.0, 2.0], 0.0), _d([3.0, 6.0], 4.0)]
    before = copy.deepcopy(deltas)
    out = weighted_mean(deltas, [1.0, 3.0])
    # w: (1*1 + 3*3) / 4 = 2.5, (1*2 + 3*6) / 4 = 5.0 ; b: (0 + 3*4) / 4 = 3.0
    assert out["w"].tolist() == [2.5, 5.0] and out["b"].tolist() == [[3.0]]
    assert out["w"].dtype == np.float32 and list(out) == ["w", "b"]
    _assert_same(deltas, before)


def test_weighted_mean_refuses_bad_input() -> None:
    a, b = _d([1.0, 2.0], 0.0), _d([1.0, 2.0], 0.0)
    with pytest.raises(ValueError):
        weighted_mean([a, b], [1.0])
    with pytest.raises(ValueError):
        weighted_mean([a, b], [0.0, 0.0])
    with pytest.raises(ValueError):
        weighted_mean([a, b], [1.0, -1.0])
    with pytest.raises(ValueError):
        weighted_mean([a, {"w": np.zeros(3, np.float32), "b": b["b"]}], [1.0, 1.0])
    with pytest.raises(ValueError):
        weighted_mean([a, {"w": a["w"]}], [1.0, 1.0])
    with pytest.raises(ValueError):
        weighted_mean([], [])


def _honest_and_outlier() -> list[dict[str, np.ndarray]]:
    honest = [0.9, 0.95, 1.0, 1.05, 1.1]
    return [_d([v, -v], v) for v in honest] + [_d([10.0, -10.0], 10.0)]  # 10x the typical


def test_median_and_trimmed_mean_resist_an_outlier() -> None:
    deltas = _honest_and_outlier()
    before = copy.deepcopy(deltas)
    mean = weighted_mean(deltas, [1.0] * 6)
    assert mean["w"][0] == pytest.approx(2.5)  # (5.0 + 10) / 6: dragged away
    med = coordinate_median(deltas)
    # sorted 0.9 0.95 1.0 1.05 1.1 10 -> (1.0 + 1.05) / 2
    assert med["w"].tolist() == pytest.approx([1.025, -1.025])
    assert med["b"][0, 0] == pytest.approx(1.025)
    tm = trimmed_mean(deltas, 0.2)  # floor(0.2 * 6) = 1 dropped at each end
    assert tm["w"].tolist() == pytest.approx([1.025, -1.025])  # mean(0.95 1.0 1.05 1.1)
    _assert_same(deltas, before)


def test_trimmed_mean_edges() -> None:
    deltas = [_d([1.0, 2.0], 3.0), _d([3.0, 4.0], 5.0)]
    assert trimmed_mean(deltas, 0.0)["w"].tolist() == [2.0, 3.0]
    assert trimmed_mean(deltas, 0.49)["w"].tolist() == [2.0, 3.0]  # floor(0.98) = 0
    with pytest.raises(ValueError):
        trimmed_mean(deltas, 0.5)


def test_norms_and_clipping() -> None:
    delta = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([4.0], np.float32)}
    before = copy.deepcopy(delta)
    assert global_norm(delta) == pytest.approx(5.0)
    clipped, scale = clip_by_norm(delta, 1.0)
    assert scale == pytest.approx(0.2)
    assert clipped["a"].tolist() == pytest.approx([0.6, 0.0])
    assert clipped["b"].tolist() == pytest.approx([0.8])
    assert global_norm(clipped) == pytest.approx(1.0)
    same, scale = clip_by_norm(delta, 10.0)
    assert scale == 1.0 and same["a"] is not delta["a"]
    assert same["a"].tolist() == [3.0, 0.0]
    _assert_same([delta], [before])
    with pytest.raises(ValueError):
        clip_by_norm({"a": np.array([np.inf], np.float32)}, 1.0)
    with pytest.raises(ValueError):
        clip_by_norm(delta, 0.0)
    assert np.isnan(global_norm({"a": np.array([np.nan], np.float32)}))


def test_cosine() -> None:
    a = {"x": np.array([1.0, 0.0], np.float32), "y": np.array([1.0], np.float32)}
    neg = {k: -v for k, v in a.items()}
    ortho = {"x": np.array([0.0, 1.0], np.float32), "y": np.array([0.0], np.float32)}
    zero = {k: np.zeros_like(v) for k, v in a.items()}
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, neg) == pytest.approx(-1.0)
    assert cosine(a, ortho) == 0.0
    assert cosine(a, zero) == 0.0


def test_global_norm_of_float32_is_exact_past_float32_overflow() -> None:
    huge = np.full(4, 1e30, np.float32)  # squares overflow float32, not float64
    assert global_norm({"a": huge}) == pytest.approx(2e30)
    assert global_norm({"a": np.array([np.inf], np.float32)}) == float("inf")
    mixed = {"a": np.array([3.0], np.float32), "b": np.array([4.0], np.float64)}
    assert global_norm(mixed) == 5.0
    rng = np.random.default_rng(1)
    big = {"w": rng.standard_normal(100_000).astype(np.float32)}
    exact = float(np.sqrt(np.sum(big["w"].astype(np.float64) ** 2)))
    assert global_norm(big) == pytest.approx(exact, rel=1e-6)


def test_weighted_mean_is_bit_for_bit_the_float64_formula() -> None:
    rng = np.random.default_rng(7)
    deltas = [{"w": rng.standard_normal((50, 4)).astype(np.float32),
               "s": np.asarray(rng.standard_normal(), np.float32)} for _ in range(9)]
    weights = [float(x) for x in rng.random(9) * 40]
    weights[3] = 0.0
    w = np.asarray(weights, np.float64)
    got = weighted_mean(deltas, weights)
    for name in ("w", "s"):
        acc = np.zeros(deltas[0][name].shape, np.float64)
        for wi, d in zip(w, deltas, strict=True):
            if wi:
                acc += wi * d[name].astype(np.float64)
        expected = (acc / float(w.sum())).astype(np.float32)
        assert got[name].dtype == np.float32 and got[name].shape == expected.shape
        assert np.array_equal(got[name], expected)
