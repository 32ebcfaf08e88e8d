"""``shard_data``: labelled sets split by the chosen split, unlabeled ones (anomaly detection,
autoencoders) split iid whatever the split, never a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmq.simulate import FleetSpec, shard_data


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
def test_an_unlabeled_npz_is_split_over_the_devices(tmp_path: Path, split: str) -> None:
    path = tmp_path / "sensors.npz"
    X = np.random.default_rng(0).normal(size=(120, 6)).astype(np.float32)
    np.savez(path, X=X)
    data = shard_data(FleetSpec(devices=4, dataset=str(path), split=split))  # type: ignore[arg-type]
    assert all(s.y is None for s in data.shards) and data.test.y is None
    rows = np.concatenate([s.X for s in data.shards] + [data.test.X])
    assert len(rows) == len(X) and {r.tobytes() for r in rows} == {r.tobytes() for r in X}
    assert min(len(s) for s in data.shards) > 0


def test_a_labelled_set_keeps_its_labels() -> None:
    data = shard_data(FleetSpec(devices=3, dataset="wine", split="dirichlet"))
    assert all(s.y is not None and len(s.y) == len(s.X) for s in data.shards)
