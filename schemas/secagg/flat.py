"""A model's parameters as one vector, the order every member and the orchestrator share:
tensors by name, each flattened in C order."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from .errors import Problem, SecAggError

__all__ = ["flatten", "unflatten"]


def flatten(params: Mapping[str, npt.NDArray[np.floating]]) -> npt.NDArray[np.float32]:
    if not params:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(params[k], dtype=np.float32).reshape(-1)
                           for k in sorted(params)])


def unflatten(flat: npt.NDArray[np.floating], shapes: Mapping[str, tuple[int, ...]]
              ) -> dict[str, npt.NDArray[np.float32]]:
    sizes = {k: int(np.prod(shapes[k], dtype=np.int64)) for k in sorted(shapes)}
    if flat.size != sum(sizes.values()):
        raise SecAggError(Problem.BAD_PARAMETER,
                          f"{flat.size} coordinates for a model of {sum(sizes.values())}")
    out, at = {}, 0
    for k, size in sizes.items():
        out[k] = np.asarray(flat[at:at + size], dtype=np.float32).reshape(shapes[k])
        at += size
    return out
