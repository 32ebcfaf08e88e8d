"""Does a data set fit an imported model? Checked by ``fedmq model import --data`` before
anything is written, so a mismatch is found on the bench rather than on the fleet."""

from __future__ import annotations

import numpy as np

from .compiler import ImportedModel
from .errors import ModelImportError

__all__ = ["check_fit"]


def check_fit(imported: ImportedModel, X: np.ndarray, y: np.ndarray | None,
              source: str) -> None:
    """``X`` rows must carry the model's features; labels (when the loss takes them) must be
    classes the model outputs. Raises :class:`ModelImportError` naming ``source``."""
    shape = "x".join(map(str, imported.input_shape))
    if X.ndim != 2 or X.shape[1] != imported.n_features:
        got = X.shape[1] if X.ndim == 2 else f"an array of shape {X.shape}"
        raise ModelImportError(f"{source}: {got} features per sample, the model takes "
                               f"{imported.n_features} (input {shape})")
    if imported.loss == "mse":
        return
    if y is None:
        raise ModelImportError(f"{source}: no labels, and --loss {imported.loss} needs them")
    classes = 2 if imported.loss == "bce" else imported.n_classes
    outside = (y < 0) | (y >= classes)
    if outside.any():
        raise ModelImportError(f"{source}: {int(outside.sum())} label(s) outside 0..{classes - 1} "
                               f"(the model has {classes} classes), e.g. {int(y[outside][0])}")
