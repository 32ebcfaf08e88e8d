"""Local data loading: npz/csv round trips and a readable DataError for every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.data import DataError, LocalData, load_local_data, split_holdout


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_npz_round_trip(tmp_path: Path) -> None:
    X = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([0, 2, 1, 2], dtype=np.int32)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    data = load_local_data(tmp_path / "d.npz")
    assert data.X.dtype == np.float32 and data.X.flags["C_CONTIGUOUS"]
    assert data.y is not None and data.y.dtype == np.int64
    np.testing.assert_array_equal(data.X, X)
    np.testing.assert_array_equal(data.y, y)
    assert len(data) == 4 and data.n_features == 3
    unlabeled = load_local_data(str(tmp_path / "d.npz"), supervised=False)
    assert unlabeled.y is None


def test_csv_with_header_uses_the_label_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.csv", "a,label,b\n1.5,0,2\n-3,1,4e2\n\n5,2,6\n")
    data = load_local_data(path)
    np.testing.assert_array_equal(data.X, [[1.5, 2], [-3, 400], [5, 6]])
    assert data.y is not None and data.y.tolist() == [0, 1, 2]
    unlabeled = load_local_data(path, supervised=False)
    assert unlabeled.y is None and unlabeled.n_features == 2  # the label is never a feature


def test_csv_without_header_takes_the_last_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.csv", "1,2,0\n3,4,1\n")
    data = load_local_data(path)
    np.testing.assert_array_equal(data.X, [[1, 2], [3, 4]])
    assert data.y is not None and data.y.tolist() == [0, 1]
    assert load_local_data(path, supervised=False).n_features == 3
    by_index = load_local_data(path, label_column=0)
    assert by_index.y is not None and by_index.y.tolist() == [1, 3]


def test_csv_label_column_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "d.csv", "\ufeffx,y,target\n1,2,1\n3,4,0\n")  # with a BOM
    data = load_local_data(path, label_column="target")
    assert data.y is not None and data.y.tolist() == [1, 0]
    np.testing.assert_array_equal(data.X, [[1, 2], [3, 4]])


def test_split_holdout(tmp_path: Path) -> None:
    data = LocalData(np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10))
    train, holdout = split_holdout(data, 0.3, np.random.default_rng(0))
    assert len(train) == 7 and len(holdout) == 3
    assert train.y is not None and holdout.y is not None
    assert sorted([*train.y.tolist(), *holdout.y.tolist()]) == list(range(10))
    np.testing.assert_array_equal(train.X[:, 0], train.y * 2)  # rows stay with their labels
    tiny = LocalData(data.X[:2], None)
    tiny_train, tiny_holdout = split_holdout(tiny, 0.01, np.random.default_rng(0))
    assert len(tiny_train) == 1 and len(tiny_holdout) == 1
    with pytest.raises(DataError, match="at least 2"):
        split_holdout(LocalData(data.X[:1], None), 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_holdout(data, 1.0, np.random.default_rng(0))


def _npz(tmp_path: Path, **arrays: object) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "absent.npz", "no such file"),
        (lambda p: p, "not a regular file"),
        (lambda p: _write(p, "d.txt", "1,2\n"), r"unsupported file type '\.txt'"),
        (lambda p: _write(p, "d.npz", "not a zip"), "not a readable .npz"),
        (lambda p: _npz(p, features=np.zeros((2, 2))), r"no array 'X'.*features"),
        (lambda p: _npz(p, X=np.zeros((2, 2))), "no array 'y'"),
        (lambda p: _npz(p, X=np.zeros(4), y=np.zeros(4, int)), "X must be 2-D"),
        (lambda p: _npz(p, X=np.zeros((0, 3)), y=np.zeros(0, int)), "no data"),
        (lambda p: _npz(p, X=np.array([["a", "b"]]), y=np.zeros(1, int)), "must be numeric"),
        (lambda p: _npz(p, X=np.zeros((3, 2)), y=np.zeros(2, int)), "2 labels for 3 samples"),
        (lambda p: _npz(p, X=np.zeros((2, 2)), y=np.zeros((2, 1), int)), "labels must be 1-D"),
        (lambda p: _npz(p, X=np.zeros((2, 2)), y=np.array([0.5, 1.0])), "whole numbers"),
        (lambda p: _npz(p, X=np.zeros((2, 2)), y=np.array(["a", "b"])), "must be integers"),
        (lambda p: _npz(p, X=np.zeros((2, 2)), y=np.array([0, -1])), "non-negative"),
        (lambda p: _npz(p, X=np.array([[0.0, np.nan], [1, 2]]), y=np.zeros(2, int)),
         "row 0, column 1"),
        (lambda p: _npz(p, X=np.array([[0.0, 1], [1e300, 2]]), y=np.zeros(2, int)),
         "beyond float32.*row 1, column 0"),
        (lambda p: _npz(p, X=np.array([[0, 1]], dtype=object), y=np.zeros(1, int)),
         "holds Python objects"),
        (lambda p: _write(p, "d.csv", ""), "the file is empty"),
        (lambda p: _write(p, "d.csv", "a,b,label\n"), "no data rows"),
        (lambda p: _write(p, "d.csv", "a,label\n1,0\nx,1\n"), r"line 3, column 1: 'x'"),
        (lambda p: _write(p, "d.csv", "1,2,0\n3,4\n"), "line 2 has 2 fields, expected 3"),
        (lambda p: _write(p, "d.csv", "a,b\n1,2,3\n"), "header has 2 columns"),
        (lambda p: _write(p, "d.csv", "1,2,0.5\n"), "whole numbers"),
        (lambda p: _write(p, "d.csv", "1,inf,0\n"), "infinite"),
        (lambda p: _write(p, "d.csv", "3\n4\n"), "no feature columns"),
        (lambda p: (p / "d.csv").write_bytes(b"\xff\xfe1,2\n") and p / "d.csv", "UTF-8"),
    ],
)
def test_bad_input_is_a_readable_data_error(
    tmp_path: Path, make: object, message: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(DataError, match=message) as info:
        load_local_data(path)
    assert "\n" not in str(info.value)


def test_bad_label_column_choice(tmp_path: Path) -> None:
    with_header = _write(tmp_path, "h.csv", "a,b\n1,0\n")
    no_header = _write(tmp_path, "n.csv", "1,0\n")
    with pytest.raises(DataError, match=r"no column 'target' in the header \(a, b\)"):
        load_local_data(with_header, label_column="target")
    with pytest.raises(DataError, match="there is no header"):
        load_local_data(no_header, label_column="label")
    with pytest.raises(DataError, match="out of range for 2 columns"):
        load_local_data(no_header, label_column=5)
