"""Pure checks the ingestion pipeline runs on a decoded delta before it is accepted."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from schemas.errors import Reason

from .reducers import global_norm

__all__ = ["DTYPE", "check_delta"]

DTYPE = "dtype"
"""Reason for a tensor that is not float32 (``schemas.Reason`` has no member for it yet)."""


def check_delta(
    delta: Mapping[str, object],
    expected_shapes: Mapping[str, tuple[int, ...]],
    max_norm: float | None = None,
) -> str | None:
    """Return why ``delta`` is unusable for a model with ``expected_shapes``, or None if it fits.

    Reasons, checked in this order (cheap structural checks before any arithmetic):
    ``missing_tensor``, ``unexpected_tensor``, ``dtype`` (not a float32 ndarray),
    ``shape_mismatch``, ``non_finite``, ``norm_exceeded`` (global L2 norm > ``max_norm``).
    """
    for name in expected_shapes:
        if name not in delta:
            return Reason.MISSING_TENSOR.value
    for name in delta:
        if name not in expected_shapes:
            return Reason.UNEXPECTED_TENSOR.value
    for value in delta.values():
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            return DTYPE
    arrays: dict[str, np.ndarray] = {k: v for k, v in delta.items() if isinstance(v, np.ndarray)}
    for name, arr in arrays.items():
        if arr.shape != tuple(expected_shapes[name]):
            return Reason.SHAPE_MISMATCH.value
    for arr in arrays.values():
        if not np.isfinite(arr).all():
            return Reason.NON_FINITE.value
    if max_norm is not None:
        norm = global_norm(arrays)
        # a finite delta can still overflow to an infinite norm: that exceeds any bound
        if not math.isfinite(norm) or norm > max_norm:
            return Reason.NORM_EXCEEDED.value
    return None
