"""The device's local data set: loading ``.npz`` / ``.csv`` files and holding out a share.

Data never leaves the device; this module only turns a file into float32 features and int64
labels, and rejects anything malformed with a ``DataError`` that says what is wrong and where.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import ConfigError, DataError

__all__ = ["LABEL", "DataError", "FixedData", "LocalData", "TrainingSet", "label_counts",
           "load_local_data", "split_holdout"]

LABEL = "label"
_MAX_LABEL = 2**31


@dataclass(frozen=True)
class LocalData:
    """Features ``X`` (float32 ``[n, f]``) and labels ``y`` (int64 ``[n]``, or None when
    unsupervised)."""

    X: np.ndarray = field(repr=False)
    y: np.ndarray | None = field(repr=False)

    def __len__(self) -> int:
        return len(self.X)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


class TrainingSet(Protocol):
    """What the worker trains and evaluates on, read afresh for every task: a fixed split of
    one file (``FixedData``) or a sliding window over a directory (``datastream``)."""

    @property
    def train(self) -> LocalData: ...

    @property
    def holdout(self) -> LocalData: ...


@dataclass(frozen=True)
class FixedData:
    """One file's data, split once."""

    train: LocalData
    holdout: LocalData

    @classmethod
    def of(cls, data: LocalData, holdout: float, rng: np.random.Generator) -> FixedData:
        """``holdout`` of ``data`` kept for evaluation (0: evaluate on all of it)."""
        if holdout > 0:
            return cls(*split_holdout(data, holdout, rng))
        return cls(data, data)


def label_counts(data: LocalData) -> dict[str, int]:
    """How many samples carry each label (empty when unlabeled)."""
    if data.y is None or len(data.y) == 0:
        return {}
    labels, n = np.unique(data.y, return_counts=True)
    return {str(int(k)): int(c) for k, c in zip(labels, n, strict=True)}


def load_local_data(
    path: str | os.PathLike[str],
    *,
    label_column: str | int | None = None,
    supervised: bool = True,
) -> LocalData:
    """Load a local data file.

    ``.npz``: array ``X`` and, when ``supervised``, array ``y`` (``label_column`` is ignored).

    ``.csv``: comma-separated numbers; the first row is a header when any of its fields is not a
    number. ``label_column`` picks the label column by header name or by index (negative counts
    from the end). The default, None, means the column named ``label`` if the header has one,
    else the last column. When not ``supervised``, ``y`` is None; a label column that was named
    explicitly, or a header column called ``label``, is dropped rather than used as a feature.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if not p.is_file():
        raise DataError(f"{p}: not a regular file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        X, y = _read_npz(p, supervised)
    elif suffix == ".csv":
        X, y = _read_csv(p, label_column, supervised)
    else:
        raise DataError(f"{p}: unsupported file type {p.suffix!r} (expected .npz or .csv)")
    return LocalData(_features(p, X), _labels(p, y, len(X)) if y is not None else None)


def split_holdout(
    data: LocalData, fraction: float, rng: np.random.Generator
) -> tuple[LocalData, LocalData]:
    """A random ``(train, holdout)`` split; both parts get at least one sample."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"holdout fraction must be between 0 and 1, got {fraction!r}")
    n = len(data)
    if n < 2:
        raise DataError(f"cannot hold out part of {n} sample(s); at least 2 are needed")
    n_holdout = min(n - 1, max(1, round(n * fraction)))
    order = rng.permutation(n)
    return _take(data, order[n_holdout:]), _take(data, order[:n_holdout])


def _take(data: LocalData, index: np.ndarray) -> LocalData:
    return LocalData(data.X[index], data.y[index] if data.y is not None else None)


# -- readers ---------------------------------------------------------------------------------


def _read_npz(path: Path, supervised: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if not zipfile.is_zipfile(path):
        # np.load would fall back to unpickling, and refuse with advice to allow pickles
        raise DataError(f"{path}: not a readable .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            if "X" not in names:
                found = ", ".join(sorted(names)) or "none"
                raise DataError(f"{path}: no array 'X' in the archive (arrays: {found})")
            X = archive["X"]
            if not supervised:
                return X, None
            if "y" not in names:
                raise DataError(f"{path}: no array 'y' (labels) in the archive")
            return X, archive["y"]
    except DataError:
        raise
    except ValueError as exc:  # object arrays refused by allow_pickle=False, corrupt headers
        if "pickle" in str(exc):
            raise DataError(
                f"{path}: an array holds Python objects; only numeric arrays are loaded"
            ) from exc
        raise DataError(f"{path}: unreadable array in the archive ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc


def _read_csv(
    path: Path, label_column: str | int | None, supervised: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            first = next((line for line in handle if line.strip()), "")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as UTF-8 text ({exc})") from exc
    if not first:
        raise DataError(f"{path}: the file is empty")
    fields = [f.strip() for f in first.split(",")]
    header = fields if not all(_is_number(f) for f in fields) else None
    try:
        with warnings.catch_warnings():
            # a header-only file is reported below as "no data rows"
            warnings.filterwarnings("ignore", message="loadtxt: input contained no data")
            table = np.loadtxt(
                path, delimiter=",", skiprows=1 if header else 0, dtype=np.float64, ndmin=2,
                encoding="utf-8-sig", comments=None,
            )
    except ValueError as exc:
        raise DataError(f"{path}: {_csv_problem(path, len(fields), exc)}") from exc
    if table.size == 0:
        raise DataError(f"{path}: no data rows")
    if header is not None and len(header) != table.shape[1]:
        raise DataError(
            f"{path}: the header has {len(header)} columns but the rows have {table.shape[1]}"
        )
    column = _label_index(path, header, table.shape[1], label_column, supervised)
    if column is None:
        return table, None
    features = np.delete(table, column, axis=1)
    if features.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides the label column")
    return features, table[:, column] if supervised else None


def _label_index(
    path: Path,
    header: list[str] | None,
    n_columns: int,
    label_column: str | int | None,
    supervised: bool,
) -> int | None:
    if isinstance(label_column, str):
        if header is None:
            raise DataError(f"{path}: label column {label_column!r} named, but there is no header")
        if label_column not in header:
            raise DataError(
                f"{path}: no column {label_column!r} in the header ({', '.join(header)})"
            )
        return header.index(label_column)
    if isinstance(label_column, int) and not isinstance(label_column, bool):
        if not -n_columns <= label_column < n_columns:
            raise DataError(
                f"{path}: label column {label_column} is out of range for {n_columns} columns"
            )
        return label_column % n_columns
    if label_column is not None:
        raise TypeError(f"label_column must be a str, an int or None, got {label_column!r}")
    if header is not None and LABEL in header:
        return header.index(LABEL)
    return n_columns - 1 if supervised else None


def _csv_problem(path: Path, n_fields: int, error: ValueError) -> str:
    """Rescan a file numpy refused, to name the first bad line (1-based) and column."""
    header_seen = False
    with path.open(encoding="utf-8-sig") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split(",")]
            if not header_seen:
                header_seen = True
                if not all(_is_number(f) for f in fields):
                    continue
            if len(fields) != n_fields:
                return f"line {lineno} has {len(fields)} fields, expected {n_fields}"
            for col, text in enumerate(fields, start=1):
                if not _is_number(text):
                    return f"line {lineno}, column {col}: {text!r} is not a number"
    return f"not a numeric table ({error})"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- validation ------------------------------------------------------------------------------


def _features(path: Path, X: np.ndarray) -> np.ndarray:
    if X.ndim != 2:
        raise DataError(f"{path}: X must be 2-D [samples, features], got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: X must be numeric, got dtype {X.dtype}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{path}: no data (X has shape {X.shape})")
    with np.errstate(over="ignore"):  # out-of-range values become inf and are reported below
        X32 = np.ascontiguousarray(X, dtype=np.float32)
    bad = ~np.isfinite(X32)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{path}: {int(bad.sum())} feature value(s) are NaN, infinite or beyond float32 "
            f"(first at row {row}, column {col})"
        )
    return X32


def _labels(path: Path, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{path}: labels must be 1-D, got shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{path}: {len(y)} labels for {n} samples")
    if y.dtype.kind in "biu":
        labels = y.astype(np.int64)
    elif y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{path}: labels must be whole numbers (class indices)")
        if np.abs(y).max() >= _MAX_LABEL:
            raise DataError(f"{path}: labels must be class indices below {_MAX_LABEL}")
        labels = y.astype(np.int64)
    else:
        raise DataError(f"{path}: labels must be integers, got dtype {y.dtype}")
    if labels.min() < 0:
        raise DataError(f"{path}: labels must be non-negative class indices, found {labels.min()}")
    return labels
