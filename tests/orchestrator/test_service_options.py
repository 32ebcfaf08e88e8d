"""Each selectable aggregation and training option, through a real orchestrator with real
agents (``fedmq.simulate``) on a real Mosquitto, shown to take effect.

A test recomputes what its option should have produced -- from the store (each version's
parent and applied updates, their weights, the server state) and the deltas the agents sent
(see ``tests.support.fleet_run``) -- with the pure functions of
:mod:`orchestrator.aggregation`, checks the stored result equals it, and that it differs from
what the service would have made had the option been silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.aggregation import (
    FedAdam,
    FedYogi,
    ServerSGD,
    clip_by_norm,
    coordinate_median,
    global_norm,
    trimmed_mean,
    weighted_mean,
)
from orchestrator.broker import MosquittoBroker
from orchestrator.service import Orchestrator
from orchestrator.store import Store
from tests.support.fleet_run import (
    VersionStep,
    assert_matches,
    base_sections,
    merged,
    next_version,
    run_fleet,
    version_steps,
)


def _sections(tmp_path: Path, broker: MosquittoBroker, **sections: dict[str, Any]
              ) -> dict[str, dict[str, Any]]:
    return merged(base_sections(tmp_path, broker), **sections)


def _weights(step: VersionStep) -> list[float]:
    """The weights the ledger recorded for the step's updates (n_i * s(t - tau_i))."""
    assert all(r.weight is not None for r in step.rows)
    return [float(r.weight or 0.0) for r in step.rows]


def _mean(step: VersionStep) -> dict[str, Any]:
    return ServerSGD().step(step.parent, weighted_mean(step.deltas, _weights(step)))


# -- robust reducers and server-side clipping ---------------------------------------------------


async def test_median_reducer_makes_every_version(tmp_path: Path, broker: MosquittoBroker
                                                  ) -> None:
    sections = _sections(tmp_path, broker, aggregation={"k": 3, "reducer": "median"},
                         stopping={"max_versions": 3})
    run = await run_fleet(tmp_path, broker, sections, devices=4)

    steps = await version_steps(run)
    assert [s.info.version for s in steps] == [1, 2, 3]
    for step in steps:
        median = ServerSGD().step(step.parent, coordinate_median(step.deltas))
        assert_matches(step.params, median, _mean(step), what=f"v{step.info.version}")


async def test_trimmed_mean_reducer_makes_every_version(tmp_path: Path, broker: MosquittoBroker
                                                        ) -> None:
    # five updates a version, 0.25 of them trimmed at each end: one (the default 0.1 trims
    # none of five, which would be the plain unweighted mean)
    sections = _sections(tmp_path, broker,
                         aggregation={"k": 5, "reducer": "trimmed_mean", "trim_fraction": 0.25},
                         stopping={"max_versions": 2})
    run = await run_fleet(tmp_path, broker, sections, devices=6)

    steps = await version_steps(run)
    assert [len(s.rows) for s in steps] == [5, 5]
    for step in steps:
        def reduced(delta: dict[str, Any], step: VersionStep = step) -> dict[str, Any]:
            return ServerSGD().step(step.parent, delta)
        assert_matches(step.params, reduced(trimmed_mean(step.deltas, 0.25)),
                       _mean(step), reduced(trimmed_mean(step.deltas, 0.1)),
                       reduced(coordinate_median(step.deltas)), what=f"v{step.info.version}")


async def test_server_side_clipping_bounds_each_update(tmp_path: Path, broker: MosquittoBroker
                                                       ) -> None:
    clip = 0.1
    sections = _sections(tmp_path, broker, aggregation={"k": 3, "clip_norm": clip},
                         stopping={"max_versions": 2})
    run = await run_fleet(tmp_path, broker, sections, devices=4)

    steps = await version_steps(run)
    assert len(steps) == 2
    for step in steps:
        # the agents' updates are larger than the bound, so clipping must change the version
        assert any(global_norm(d) > 2 * clip for d in step.deltas), step.rows
        clipped = [clip_by_norm(d, clip)[0] for d in step.deltas]
        expected = ServerSGD().step(step.parent, weighted_mean(clipped, _weights(step)))
        assert_matches(step.params, expected, _mean(step), what=f"v{step.info.version}")


# -- adaptive server optimizers -----------------------------------------------------------------

# none of them the defaults, so that each must have reached the optimizer
ADAPTIVE = {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 0.01}


@pytest.mark.parametrize("name, kind", [("fedadam", FedAdam), ("fedyogi", FedYogi)],
                         ids=["fedadam", "fedyogi"])
async def test_adaptive_server_optimizer_steps_and_keeps_its_moments(
    tmp_path: Path, broker: MosquittoBroker, name: str, kind: type[FedAdam] | type[FedYogi],
) -> None:
    sections = _sections(tmp_path, broker, aggregation={
        "k": 3, "server_optimizer": name, "server_lr": ADAPTIVE["lr"],
        "beta1": ADAPTIVE["beta1"], "beta2": ADAPTIVE["beta2"], "tau": ADAPTIVE["tau"]},
        stopping={"max_versions": 3})
    run = await run_fleet(tmp_path, broker, sections, devices=4)

    steps = await version_steps(run)
    assert [s.info.version for s in steps] == [1, 2, 3]
    optimizer = kind(**ADAPTIVE)
    for step in steps:
        mean = weighted_mean(step.deltas, _weights(step))
        expected = optimizer.step(step.parent, mean)
        sgd = ServerSGD(lr=ADAPTIVE["lr"]).step(step.parent, mean)
        assert_matches(step.params, expected, sgd, _mean(step), what=f"v{step.info.version}")

    # the server state holds this optimizer's moments after the three steps: loaded into a
    # fresh optimizer, it takes the same next step as the recomputed one
    async with Store.open(run.store_path) as store:
        state = await store.server_state()
    saved = [_loaded(kind, blob) for blob in state.values()]
    found = [s for s in saved if s is not None]
    assert len(found) == 1, sorted(state)
    assert found[0].steps == optimizer.steps == 3
    probe = steps[-1].deltas[0]
    last = steps[-1].params
    assert_matches(found[0].step(last, probe), optimizer.step(last, probe),
                   kind(**ADAPTIVE).step(last, probe), what="moments")


def _loaded(kind: type[FedAdam] | type[FedYogi], blob: bytes) -> FedAdam | FedYogi | None:
    """``blob`` loaded into a fresh ``kind`` optimizer, or None if it is not that state."""
    optimizer = kind(**ADAPTIVE)
    try:
        optimizer.load_state_dict(blob)
    except ValueError:  # OptimizerStateError: some other server state
        return None
    return optimizer


# -- the proximal term ----------------------------------------------------------------------------


async def test_proximal_mu_pulls_updates_toward_the_global_model(
    tmp_path: Path, broker: MosquittoBroker,
) -> None:
    """Two runs that differ only in ``training.mu``: each device trains once, on version 0,
    with the same data, seed and starting model, so its delta differs only by the proximal
    term, which must shrink it."""
    mu = 2.0
    norms: dict[float, list[float]] = {}
    for i, value in enumerate((0.0, mu)):
        workdir = tmp_path / f"run{i}"
        workdir.mkdir()
        sections = _sections(
            workdir, broker, federation={"id": f"prox{i}"},
            training={"epochs": 3, "mu": value},
            # one task per device, all on version 0: version 1 is made of the four of them
            aggregation={"k": 4}, selection={"concurrency": 4, "max_tasks_per_window": 1},
            stopping={"max_versions": 1})
        run = await run_fleet(workdir, broker, sections, devices=4, prefix=f"p{i}")
        assert run.stopped is not None
        assert sorted(len(t) for t in run.tasks.values()) == [1, 1, 1, 1]
        assert {t.mu for tasks in run.tasks.values() for t in tasks} == {value}
        (step,) = await version_steps(run)
        assert step.staleness == [0, 0, 0, 0]
        by_device = sorted(zip((str(r.sender) for r in step.rows), step.deltas, strict=True))
        norms[value] = [global_norm(d) for _, d in by_device]

    for plain, proximal in zip(norms[0.0], norms[mu], strict=True):
        assert proximal < 0.8 * plain, norms


# -- staleness functions --------------------------------------------------------------------------


def _hinge(s: int) -> float:
    """The configured hinge below: a = 1, b = 0 (the defaults are a = 10, b = 4)."""
    return 1.0 if s <= 0 else 1.0 / (1.0 * (s - 0) + 1.0)


async def _until_a_stale_update_is_applied(orch: Orchestrator) -> None:
    version = 1
    while await next_version(orch, version):
        rows = await orch.store.ledger(status="applied")
        if any(int(r.base_version or 0) < int(r.applied_version or 0) - 1 for r in rows):
            return
        version = orch.version + 1


@pytest.mark.parametrize("name, options, factor", [
    ("hinge", {"a": 1.0, "b": 0}, _hinge),
    ("constant", {}, lambda s: 1.0),
], ids=["hinge", "constant"])
async def test_staleness_function_weights_each_update(
    tmp_path: Path, broker: MosquittoBroker, name: str, options: dict[str, Any],
    factor: Callable[[int], float],
) -> None:
    # six devices training at once for versions of two: most updates arrive a version or
    # more behind; the run ends once one of those is in a version
    sections = _sections(tmp_path, broker,
                         aggregation={"k": 2, "staleness": name, **options},
                         selection={"concurrency": 6}, stopping={"max_versions": 40})
    run = await run_fleet(tmp_path, broker, sections, devices=6,
                          until=_until_a_stale_update_is_applied)

    steps = await version_steps(run)
    stale = [(s, r) for step in steps for s, r in zip(step.staleness, step.rows, strict=True)
             if s > 0]
    assert stale, [step.staleness for step in steps]
    for step in steps:
        expected = [int(r.num_samples or 0) * factor(s)
                    for s, r in zip(step.staleness, step.rows, strict=True)]
        assert _weights(step) == pytest.approx(expected, rel=1e-12), step.staleness
        # and the version is the mean under those weights
        made = ServerSGD().step(step.parent, weighted_mean(step.deltas, expected))
        assert_matches(step.params, made, what=f"v{step.info.version}")
    # the default (polynomial, a = 0.5) would have weighed the stale ones otherwise
    for s, row in stale:
        assert row.weight != pytest.approx(int(row.num_samples or 0) * (1 + s) ** -0.5)
