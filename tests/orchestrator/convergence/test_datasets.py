"""Named data sets, splits, IID/Dirichlet partitions and shards an edge agent can read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.data import load_local_data
from orchestrator.convergence.datasets import (
    DatasetError,
    label_distribution,
    load_named,
    partition_dirichlet,
    partition_iid,
    split_train_test,
    write_shards,
)


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [("digits", (1797, 64), 10), ("wine", (178, 13), 3), ("breast_cancer", (569, 30), 2)],
)
def test_named_sets_are_standardized(name: str, shape: tuple[int, int], classes: int) -> None:
    data = load_named(name)
    assert data.X.shape == shape and data.X.dtype == np.float32
    assert data.y is not None and data.y.dtype == np.int64
    assert data.n_classes == classes and set(data.y.tolist()) == set(range(classes))
    np.testing.assert_allclose(data.X.mean(axis=0), 0.0, atol=1e-5)
    spread = data.X.std(axis=0)
    assert np.all((np.abs(spread - 1.0) < 1e-3) | (spread == 0.0))


def test_npz_path_and_bad_names(tmp_path: Path) -> None:
    X = np.arange(6, dtype=np.float64).reshape(3, 2)
    np.savez(tmp_path / "own.npz", X=X, y=np.array([0, 3, 1]))
    data = load_named(tmp_path / "own.npz")
    np.testing.assert_array_equal(data.X, X)  # taken as it is, not rescaled
    assert data.n_classes == 4
    np.savez(tmp_path / "unlabeled.npz", X=X)
    assert load_named(str(tmp_path / "unlabeled.npz"))[1:] == (None, 0)
    with pytest.raises(DatasetError, match="unknown data set 'mnist'"):
        load_named("mnist")
    with pytest.raises(DatasetError, match="no such file"):
        load_named(tmp_path / "absent.npz")
    np.savez(tmp_path / "nan.npz", X=np.array([[np.nan, 1.0]]))
    with pytest.raises(DatasetError, match="NaN"):
        load_named(tmp_path / "nan.npz")


def test_split_is_deterministic_and_stratified() -> None:
    data = load_named("wine")
    train, test = split_train_test(data, test_fraction=0.25, seed=3)
    again, _ = split_train_test(data, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(train.X, again.X)
    assert len(train.X) + len(test.X) == len(data.X) and len(test.X) == 45
    assert train.y is not None and test.y is not None and data.y is not None
    whole = np.bincount(data.y) / len(data.y)
    np.testing.assert_allclose(np.bincount(test.y) / len(test.y), whole, atol=0.03)


def _assert_partition(parts: list[np.ndarray], total: int) -> None:
    merged = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(merged, np.arange(total))  # every index exactly once
    assert all(len(p) > 0 for p in parts)


def test_iid_partition_is_balanced() -> None:
    y = load_named("digits").y
    assert y is not None
    parts = partition_iid(y, 7, np.random.default_rng(0))
    _assert_partition(parts, len(y))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _skew(y: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each client's labels and the whole set's."""
    freq = label_distribution(y, parts, int(y.max()) + 1)
    whole = np.bincount(y) / len(y)
    return float(0.5 * np.abs(freq - whole).sum(axis=1).mean())


def test_dirichlet_partition_covers_everything_and_skews_with_low_alpha() -> None:
    y = load_named("digits").y
    assert y is not None
    skews = {}
    for alpha in (0.05, 1.0, 100.0):
        parts = partition_dirichlet(y, 20, alpha, np.random.default_rng(1), min_size=3)
        _assert_partition(parts, len(y))
        assert min(map(len, parts)) >= 3
        skews[alpha] = _skew(y, parts)
    assert skews[0.05] > skews[1.0] > skews[100.0]
    assert skews[0.05] > 0.6 and skews[100.0] < 0.15


def test_dirichlet_tops_up_many_clients_with_tiny_alpha() -> None:
    y = np.repeat(np.arange(3), 20)
    parts = partition_dirichlet(y, 30, 0.001, np.random.default_rng(0), min_size=2)
    _assert_partition(parts, 60)
    assert all(len(p) == 2 for p in parts)


def test_dirichlet_is_deterministic_and_validates() -> None:
    y = np.repeat(np.arange(4), 10)
    a = partition_dirichlet(y, 5, 0.5, np.random.default_rng(9))
    b = partition_dirichlet(y, 5, 0.5, np.random.default_rng(9))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    with pytest.raises(DatasetError, match="alpha"):
        partition_dirichlet(y, 5, 0.0, np.random.default_rng(0))
    with pytest.raises(DatasetError, match="40 samples cannot give 30 clients at least 2"):
        partition_dirichlet(y, 30, 1.0, np.random.default_rng(0), min_size=2)
    with pytest.raises(DatasetError, match="integer"):
        partition_dirichlet(y.astype(float), 2, 1.0, np.random.default_rng(0))
    with pytest.raises(DatasetError, match="at least 1"):
        partition_iid(y, 0, np.random.default_rng(0))


def test_shards_load_on_the_agent_side(tmp_path: Path) -> None:
    data = load_named("wine")
    assert data.y is not None
    parts = partition_dirichlet(data.y, 4, 0.5, np.random.default_rng(2))
    paths = write_shards(data.X, data.y, parts, tmp_path / "shards")
    assert [p.name for p in paths] == [f"shard_{i:04d}.npz" for i in range(4)]
    for path, part in zip(paths, parts, strict=True):
        local = load_local_data(path)
        np.testing.assert_array_equal(local.X, data.X[part])
        assert local.y is not None
        np.testing.assert_array_equal(local.y, data.y[part])
    unlabeled = write_shards(data.X, None, parts[:1], tmp_path / "plain")
    assert load_local_data(unlabeled[0], supervised=False).y is None
    with pytest.raises(DatasetError, match="part 0 is empty"):
        write_shards(data.X, data.y, [np.array([], np.int64)], tmp_path / "x")
    with pytest.raises(DatasetError, match="outside"):
        write_shards(data.X, data.y, [np.array([500])], tmp_path / "x")
