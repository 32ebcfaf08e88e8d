"""Data sets for simulations and benchmarks: loading, splitting, partitioning across clients.

Partitions are index arrays, one per client; ``write_shards`` turns them into the ``.npz``
files an edge agent loads (arrays ``X`` float32 and ``y`` int64), so a simulated fleet reads its
data exactly as a real device would.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from orchestrator.errors import OrchestratorError

NAMED = ("digits", "wine", "breast_cancer")


class DatasetError(OrchestratorError, ValueError):
    """A data set cannot be loaded or partitioned as asked."""


class Dataset(NamedTuple):
    """Features (float32 ``[n, f]``), labels (int64 ``[n]``, None if unlabeled), class count
    (0 if unlabeled)."""

    X: np.ndarray
    y: np.ndarray | None
    n_classes: int


def load_named(name: str | os.PathLike[str]) -> Dataset:
    """One of ``NAMED`` (bundled with scikit-learn, no download), or a path to an ``.npz`` file
    with ``X`` and optionally ``y``.

    Named sets are standardized per feature (zero mean, unit variance; constant features are
    only centred), which suits SGD on both linear models and MLPs. ``.npz`` files are taken as
    they are: devices will see their raw data, so any scaling belongs to whoever made the file.
    """
    text = os.fspath(name)
    if text in NAMED:
        X, y = _sklearn_loader(text)(return_X_y=True)
        X = np.asarray(X, dtype=np.float64)
        std = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
        labels = np.asarray(y, dtype=np.int64)
        return Dataset(X.astype(np.float32), labels, int(labels.max()) + 1)
    path = Path(text)
    if path.suffix.lower() != ".npz":
        raise DatasetError(
            f"unknown data set {text!r}: expected one of {', '.join(NAMED)} or a .npz path"
        )
    return _load_npz(path)


def split_train_test(
    data: Dataset, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """A deterministic split, stratified by label when every class has two samples or more."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    index = np.arange(len(data.X))
    stratify = None
    if data.y is not None and np.bincount(data.y).min(initial=len(index)) >= 2:
        stratify = data.y
    try:
        train, test = train_test_split(
            index, test_size=test_fraction, random_state=seed, stratify=stratify
        )
    except ValueError as exc:  # too few samples for the fraction
        raise DatasetError(f"cannot split {len(index)} samples: {exc}") from exc
    return _subset(data, np.sort(train)), _subset(data, np.sort(test))


def partition_iid(y: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` parts of (nearly) equal size, drawn uniformly at random (``y``: the labels, or
    any array with one row per sample)."""
    total = len(y)
    _check_clients(n, total, 1)
    return [np.sort(part) for part in np.array_split(rng.permutation(total), n)]


def partition_dirichlet(
    y: np.ndarray,
    n: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Label-skewed parts: each class is spread over clients in Dirichlet(``alpha``) shares.

    Small ``alpha`` (0.1) gives each client few classes; large ``alpha`` (100) approaches IID.
    Every index lands in exactly one part, and every part gets at least ``min_size`` samples
    (short parts are topped up with random samples from the largest part).
    """
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if not np.isfinite(alpha) or alpha <= 0:
        raise DatasetError(f"alpha must be a positive number, got {alpha!r}")
    if min_size < 1:
        raise DatasetError(f"min_size must be at least 1, got {min_size}")
    _check_clients(n, len(labels), min_size)
    chunks: list[list[np.ndarray]] = [[] for _ in range(n)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(n, alpha))
        cuts = np.floor(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for client, piece in enumerate(np.split(members, cuts)):
            chunks[client].append(piece)
    parts = [np.concatenate(c) if c else np.empty(0, np.int64) for c in chunks]
    _top_up(parts, min_size, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def label_distribution(y: np.ndarray, parts: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Per-client class frequencies, ``[n_clients, n_classes]``, rows summing to 1."""
    counts = np.stack([np.bincount(y[p], minlength=n_classes) for p in parts]).astype(np.float64)
    frequencies: np.ndarray = counts / counts.sum(axis=1, keepdims=True)
    return frequencies


def write_shards(
    X: np.ndarray,
    y: np.ndarray | None,
    parts: Sequence[np.ndarray],
    out_dir: str | os.PathLike[str],
) -> list[Path]:
    """Write ``shard_0000.npz``, ``shard_0001.npz``, ... (``X`` float32, ``y`` int64)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(parts):
        index = np.asarray(part)
        if index.size == 0:
            raise DatasetError(f"part {i} is empty")
        if index.dtype.kind not in "iu" or index.min() < 0 or index.max() >= len(X):
            raise DatasetError(f"part {i} holds indices outside 0..{len(X) - 1}")
        arrays: dict[str, Any] = {"X": np.ascontiguousarray(X[index], dtype=np.float32)}
        if y is not None:
            arrays["y"] = np.asarray(y[index], dtype=np.int64)
        path = out / f"shard_{i:04d}.npz"
        np.savez(path, **arrays)
        paths.append(path)
    return paths


def _sklearn_loader(name: str) -> Callable[..., Any]:
    from sklearn import datasets

    loader: Callable[..., Any] = getattr(datasets, f"load_{name}")
    return loader


def _load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "X" not in archive.files:
                raise DatasetError(f"{path}: no array 'X' in the archive")
            X = archive["X"]
            y = archive["y"] if "y" in archive.files else None
    except DatasetError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npz archive ({exc})") from exc
    if X.ndim != 2 or X.dtype.kind not in "biuf" or X.size == 0:
        raise DatasetError(f"{path}: X must be a non-empty numeric 2-D array, got {X.shape}")
    with np.errstate(over="ignore"):
        X32 = X.astype(np.float32)
    if not np.all(np.isfinite(X32)):
        raise DatasetError(f"{path}: X holds NaN, infinite or out-of-range values")
    if y is None:
        return Dataset(X32, None, 0)
    if y.shape != (len(X),) or y.dtype.kind not in "iu" or y.min() < 0:
        raise DatasetError(
            f"{path}: y must hold {len(X)} non-negative integer labels, got {y.dtype} {y.shape}"
        )
    labels = y.astype(np.int64)
    return Dataset(X32, labels, int(labels.max()) + 1)


def _subset(data: Dataset, index: np.ndarray) -> Dataset:
    y = data.y[index] if data.y is not None else None
    return Dataset(data.X[index], y, data.n_classes)


def _check_clients(n: int, total: int, min_size: int) -> None:
    if n < 1:
        raise DatasetError(f"the number of clients must be at least 1, got {n}")
    if n * min_size > total:
        raise DatasetError(
            f"{total} samples cannot give {n} clients at least {min_size} sample(s) each"
        )


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> None:
    while True:
        sizes = np.array([len(p) for p in parts])
        short = int(sizes.argmin())
        need = min_size - int(sizes[short])
        if need <= 0:
            return
        donor = int(sizes.argmax())
        # total >= n * min_size, so while a part is short the largest one has a surplus
        take = min(need, int(sizes[donor]) - min_size)
        donor_order = rng.permutation(len(parts[donor]))
        moved = parts[donor][donor_order[:take]]
        parts[donor] = parts[donor][donor_order[take:]]
        parts[short] = np.concatenate([parts[short], moved])
