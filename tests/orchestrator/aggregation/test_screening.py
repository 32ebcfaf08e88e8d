"""Anomaly screening on real deltas: softmax regression trained in numpy on Dirichlet(0.5)
shards of ``load_digits``, 4 of 20 clients sending sign-flipped updates scaled by 10."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from orchestrator.aggregation import (
    DIRECTION_OUTLIER,
    NON_FINITE,
    NORM_OUTLIER,
    AnomalyScreen,
    BufferedUpdate,
    IsolationPolicy,
    ScreeningStateError,
    global_norm,
    weighted_mean,
)
from orchestrator.convergence.datasets import load_named, partition_dirichlet, split_train_test

CLIENTS, ATTACKERS, K = 20, {"c0", "c1", "c2", "c3"}, 10


@dataclass
class Fleet:
    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    shards: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    train, test = split_train_test(load_named("digits"), 0.2, seed=0)
    assert train.y is not None and test.y is not None
    parts = partition_dirichlet(train.y, CLIENTS, 0.5, np.random.default_rng(0), min_size=10)
    return Fleet(train.X, train.y, test.X, test.y, {f"c{i}": p for i, p in enumerate(parts)})


def _local_delta(fleet: Fleet, params: dict[str, np.ndarray], idx: np.ndarray,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One epoch of minibatch SGD (lr 0.05, batch 32) on softmax regression; local - base."""
    W, b = params["W"].copy(), params["b"].copy()
    order = rng.permutation(idx)
    for start in range(0, len(order), 32):
        xb, yb = fleet.X[order[start:start + 32]], fleet.y[order[start:start + 32]]
        logits = xb @ W + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(yb)), yb] -= 1.0
        p /= len(yb)
        W -= 0.05 * xb.T @ p
        b -= 0.05 * p.sum(axis=0)
    return {"W": (W - params["W"]).astype(np.float32), "b": (b - params["b"]).astype(np.float32)}


@dataclass
class Outcome:
    accuracy: float
    honest_flags: int
    honest_seen: int
    attacker_flags: int
    attacker_seen: int
    isolated: frozenset[str]
    reasons: set[str]


def _run(fleet: Fleet, *, attack: bool, screen: bool, versions: int = 30,
         seed: int = 0) -> Outcome:
    """Versions of K updates from non-isolated clients; flagged updates are left out and
    count towards isolation (3 flags), the rest are averaged by sample count."""
    rng = np.random.default_rng(seed)
    params = {"W": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float32)}
    screener, isolation = AnomalyScreen(), IsolationPolicy(max_flags=3, window_ms=3_600_000)
    counts = dict(hf=0, hs=0, af=0, as_=0)
    reasons: set[str] = set()
    update_id = 0
    for version in range(versions):
        pool = [c for c in fleet.shards if not isolation.is_isolated(c)]
        batch = []
        for client in rng.choice(pool, size=min(K, len(pool)), replace=False):
            delta = _local_delta(fleet, params, fleet.shards[client], rng)
            if attack and client in ATTACKERS:
                delta = {k: -10 * v for k, v in delta.items()}
            update_id += 1
            batch.append(BufferedUpdate(update_id, str(client), version,
                                        len(fleet.shards[client]), delta))
        kept = batch
        if screen:
            results = screener.screen_batch(batch)
            kept = [u for u, r in zip(batch, results, strict=True) if not r.flagged]
            for u, r in zip(batch, results, strict=True):
                bad = u.sender in ATTACKERS and attack
                counts["af" if bad else "hf"] += r.flagged
                counts["as_" if bad else "hs"] += 1
                if r.flagged:
                    assert r.reason is not None
                    reasons.add(r.reason)
                    isolation.record_flag(u.sender, version * 1000)
        if kept:
            mean = weighted_mean([u.delta for u in kept], [u.num_samples for u in kept])
            params = {k: params[k] + mean[k] for k in params}
            screener.observe_aggregate(mean)
    predicted = (fleet.X_test @ params["W"] + params["b"]).argmax(axis=1)
    return Outcome(float(np.mean(predicted == fleet.y_test)), counts["hf"], counts["hs"],
                   counts["af"], counts["as_"], isolation.isolated, reasons)


def test_poisoned_fleet_attackers_flagged_and_isolated(fleet: Fleet) -> None:
    clean = _run(fleet, attack=False, screen=False)
    plain = _run(fleet, attack=True, screen=False)
    robust = _run(fleet, attack=True, screen=True)
    # every attacker update is flagged until the attacker is isolated, after 3 flags
    assert robust.attacker_flags == robust.attacker_seen == 12
    assert robust.isolated == ATTACKERS
    assert robust.honest_flags <= 0.01 * robust.honest_seen
    assert NORM_OUTLIER in robust.reasons
    # what screening is for: the plain mean is wrecked, the screened one is not
    assert clean.accuracy > 0.9
    assert plain.accuracy < 0.5
    assert robust.accuracy >= clean.accuracy - 0.03


def test_clean_fleet_is_left_alone(fleet: Fleet) -> None:
    for seed in (1, 2):
        outcome = _run(fleet, attack=False, screen=True, seed=seed)
        assert outcome.honest_flags <= 0.01 * outcome.honest_seen
        assert outcome.isolated == frozenset()


def _unit_deltas(n: int, rng: np.random.Generator, scale: float = 1.0,
                 spread: float = 0.1) -> list[dict[str, np.ndarray]]:
    """Deltas sharing a direction, norms about ``scale`` (+- ``spread``)."""
    base = rng.standard_normal(50)
    base /= np.linalg.norm(base)
    out = []
    for _ in range(n):
        v = base + 0.5 * rng.standard_normal(50) / np.sqrt(50)
        v *= scale * (1 + spread * rng.standard_normal()) / np.linalg.norm(v)
        out.append({"w": v.astype(np.float32)})
    return out


def test_first_batch_is_judged_against_itself() -> None:
    rng = np.random.default_rng(3)
    deltas = _unit_deltas(10, rng)
    deltas[2] = {"w": -10 * deltas[2]["w"]}  # scaled: caught by norm
    deltas[5] = {"w": -1 * deltas[5]["w"]}   # unscaled: caught by direction (batch median)
    items = [BufferedUpdate(i, f"d{i}", 0, 10, d) for i, d in enumerate(deltas)]
    results = AnomalyScreen().screen_batch(items)
    assert [r.reason for r in results if r.flagged] == [NORM_OUTLIER, DIRECTION_OUTLIER]
    assert [r.update_id for r in results if r.flagged] == [2, 5]
    assert all(r.z_score is not None and r.cosine is not None for r in results)


def test_robust_z_score_is_computed_on_log_norms() -> None:
    screen = AnomalyScreen(min_history=3, mad_floor=0.0)
    for i, n in enumerate([1.0, 2.0, 4.0, 8.0, 16.0]):
        assert not screen.screen(i, "d", {"w": np.array([n], np.float32)}).flagged
    result = screen.screen(9, "d", {"w": np.array([0.0, 64.0 * 4], np.float32)}, record=False)
    logs = np.log([1.0, 2.0, 4.0, 8.0, 16.0])
    med = np.median(logs)
    mad = np.median(np.abs(logs - med))
    assert result.norm == 256.0
    assert result.z_score == pytest.approx(0.6745 * (math.log(256.0) - med) / mad)
    assert result.flagged and result.reason == NORM_OUTLIER
    assert screen.accepted_norms == (1.0, 2.0, 4.0, 8.0, 16.0)  # record=False kept it out
    # small updates are not outliers: the test is one-sided
    assert not screen.screen(10, "d", {"w": np.array([1e-6], np.float32)}).flagged


def test_nothing_judged_without_history_except_non_finite() -> None:
    screen = AnomalyScreen()
    huge = screen.screen(1, "d", {"w": np.full(4, 1e6, np.float32)})
    assert (huge.flagged, huge.z_score, huge.cosine) == (False, None, None)
    nan = screen.screen(2, "d", {"w": np.array([1.0, np.nan], np.float32)})
    assert (nan.flagged, nan.reason) == (True, NON_FINITE)
    inf = screen.screen_batch([BufferedUpdate(3, "d", 0, 1, {"w": np.array([np.inf])})])[0]
    assert inf.reason == NON_FINITE
    assert screen.accepted_norms == (huge.norm,)


def test_direction_check_waits_for_enough_aggregates() -> None:
    rng = np.random.default_rng(5)
    screen = AnomalyScreen(min_aggregates=2)
    good = _unit_deltas(3, rng)
    flipped = {"w": -good[0]["w"]}
    assert screen.screen(1, "d", flipped).cosine is None
    screen.observe_aggregate(good[1])
    assert screen.screen(2, "d", flipped).cosine is None  # one aggregate is not enough
    screen.observe_aggregate(good[2])
    result = screen.screen(3, "d", flipped)
    assert result.cosine is not None and result.cosine < -0.5
    assert result.reason == DIRECTION_OUTLIER
    assert screen.screen(4, "d", good[0]).flagged is False
    # a model with other tensors restarts the reference direction
    screen.observe_aggregate({"v": np.ones(3, np.float32)})
    assert screen.aggregates_seen == 1
    assert screen.screen(5, "d", flipped).cosine is None


def test_the_same_update_counts_once_in_history() -> None:
    screen = AnomalyScreen()
    delta = {"w": np.ones(4, np.float32)}
    screen.screen(7, "d", delta)
    screen.screen(7, "d", delta)
    assert screen.accepted_norms == (2.0,)


def test_state_round_trip_judges_alike() -> None:
    rng = np.random.default_rng(8)
    screen = AnomalyScreen()
    deltas = _unit_deltas(30, rng)
    screen.screen_batch([BufferedUpdate(i, "d", 0, 1, d) for i, d in enumerate(deltas[:20])])
    screen.observe_aggregate(deltas[0])
    screen.observe_aggregate(deltas[1])
    restored = AnomalyScreen()
    restored.load_state_dict(screen.state_dict())
    assert restored.accepted_norms == screen.accepted_norms
    assert restored.aggregates_seen == 2
    probe = [BufferedUpdate(100 + i, "d", 0, 1, d) for i, d in enumerate(deltas[20:])]
    probe.append(BufferedUpdate(200, "x", 0, 1, {"w": -5 * deltas[0]["w"]}))
    assert restored.screen_batch(probe, record=False) == screen.screen_batch(probe, record=False)
    assert global_norm(deltas[0]) > 0


@pytest.mark.parametrize("state", [b"\xc1", b"\x90", b"\x81\xa4kind\xa1x"])
def test_bad_state_is_a_typed_error(state: bytes) -> None:
    with pytest.raises(ScreeningStateError):
        AnomalyScreen().load_state_dict(state)


@pytest.mark.parametrize("kwargs", [
    dict(history=0), dict(z_threshold=0.0), dict(min_cosine=1.5), dict(direction_decay=1.0),
    dict(mad_floor=-0.1),
])
def test_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AnomalyScreen(**kwargs)  # type: ignore[arg-type]
