"""check_delta: one machine-readable reason per way a delta can be unusable."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.aggregation import check_delta

SHAPES = {"w": (2, 3), "b": (3,)}


def _ok() -> dict[str, object]:
    return {"w": np.zeros((2, 3), np.float32), "b": np.ones(3, np.float32)}


def test_a_fitting_delta_passes() -> None:
    assert check_delta(_ok(), SHAPES) is None
    assert check_delta(_ok(), SHAPES, max_norm=np.sqrt(3.0) + 1e-6) is None


@pytest.mark.parametrize(("change", "reason"), [
    (lambda d: d.pop("b"), "missing_tensor"),
    (lambda d: d.update(extra=np.zeros(1, np.float32)), "unexpected_tensor"),
    (lambda d: d.update(b=np.ones(3, np.float64)), "dtype"),
    (lambda d: d.update(b=[1.0, 1.0, 1.0]), "dtype"),
    (lambda d: d.update(w=np.zeros((3, 2), np.float32)), "shape_mismatch"),
    (lambda d: d.update(b=np.array([1.0, np.nan, 0.0], np.float32)), "non_finite"),
    (lambda d: d.update(b=np.array([1.0, -np.inf, 0.0], np.float32)), "non_finite"),
])
def test_reasons(change: object, reason: str) -> None:
    delta = _ok()
    change(delta)  # type: ignore[operator]
    assert check_delta(delta, SHAPES) == reason


def test_norm_exceeded() -> None:
    assert check_delta(_ok(), SHAPES, max_norm=1.0) == "norm_exceeded"  # norm sqrt(3)
    huge = {"w": np.full((2, 3), 3e38, np.float32), "b": np.zeros(3, np.float32)}
    assert check_delta(huge, SHAPES, max_norm=1e300) is None  # float64 norm: no overflow
    assert check_delta(huge, SHAPES, max_norm=1e30) == "norm_exceeded"
