"""The standardiser pools devices' statistics once enough have reported, caps a device that
claims too many samples, refuses a report of another width, and records the result in the
version's annex, in the store and the audit log."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from orchestrator.config import StandardizeConfig
from orchestrator.convergence.standardize import Standardizer
from orchestrator.store import Store
from orchestrator.versions.head import ModelVersion, VersionHead
from schemas.annex import FeatureStats, ModelAnnex, annex_from_record


async def _setup(store: Store) -> VersionHead:
    params = {"W0": np.zeros((2, 2), np.float32)}
    arch = await store.put_architecture(b"arch")
    info = await store.commit_version(params=params, kind="initial", parent=None,
                                      arch_hash=arch)
    return VersionHead(ModelVersion(info.version, params, arch, info.created_ms, None,
                                    ModelAnnex(wants_stats=True)))


async def test_statistics_are_pooled_once_enough_devices_report(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "s.db", federation_id="f") as store:
        head = await _setup(store)
        counters: Counter[str] = Counter()
        std = Standardizer(StandardizeConfig(enabled=True, min_devices=3, min_samples=30),
                           head=head, store=store, counters=counters)
        rng = np.random.default_rng(0)
        parts = [rng.normal(5.0, 2.0, (20, 2)) for _ in range(3)]
        await std.observe("a", FeatureStats.of(parts[0]))
        await std.observe("a", FeatureStats.of(parts[0]))  # a device counts once
        await std.observe("odd", FeatureStats.of(np.ones((20, 3))))  # another width: refused
        await std.observe("b", None)
        assert head.current.annex.wants_stats and counters["standardize.mismatch"] == 1
        await std.observe("b", FeatureStats.of(parts[1]))
        # a device claiming a million samples weighs at most 4 x the median
        liar = FeatureStats(1_000_000, [1000.0, 1000.0], [0.0, 0.0])
        await std.observe("c", liar)
        annex = head.current.annex
        assert not annex.wants_stats and annex.standardized
        weights = np.array([20, 20, 80])
        expected = (weights[:, None] * np.array(
            [parts[0].mean(0), parts[1].mean(0), [1000.0, 1000.0]])).sum(0) / weights.sum()
        assert np.allclose(annex.feature_mean, expected)
        info = (await store.list_versions())[0]
        assert annex_from_record(info.metrics["annex"]) == annex
        assert info.metrics["standardized"] == {"devices": 3, "samples": 120}
        assert len(await store.list_audit(event="standardized")) == 1
        await std.observe("d", FeatureStats.of(parts[2]))  # fixed: later reports change nothing
        assert head.current.annex == annex
