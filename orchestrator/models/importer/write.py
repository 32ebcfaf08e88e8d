"""Write an imported model where ``[model] graphs_dir`` reads it, all or nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .compiler import ImportedModel
from .errors import ModelImportError


def write_model_dir(imported: ImportedModel, directory: Path) -> None:
    """``train_step.onnx``, ``eval.onnx``, ``infer.onnx`` and ``params.npz`` in ``directory``
    (new, or empty): written to a temporary sibling first and renamed into place."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ModelImportError(f"{directory} exists and is not an empty directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for role, data in imported.graphs.items():
            (staging / f"{role}.onnx").write_bytes(data)
        with (staging / "params.npz").open("wb") as handle:
            np.savez(handle, **imported.params)  # type: ignore[arg-type]
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
