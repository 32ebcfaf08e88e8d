"""How a model architecture (its ONNX graphs) is kept in the store, and where it comes from.

The store keeps an architecture as one opaque blob (``Store.put_architecture``); fedmq's blob is
``msgpack {"format": 1, "graphs": {role: onnx bytes}, "spec": ModelSpec dict or None}``.
A federation's architecture is fixed at its first start: built from ``[model]`` (a built-in
``ModelSpec``) or read from ``graphs_dir`` (``train_step.onnx``, ``eval.onnx``, ``infer.onnx``
and initial parameters in ``params.npz``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from orchestrator.config import ModelConfig
from orchestrator.errors import OrchestratorError
from orchestrator.models import GRAPH_NAMES, build_model
from schemas.tensors import Params

__all__ = ["Architecture", "ArchitectureError", "initial_model", "pack_architecture",
           "unpack_architecture"]

_FORMAT = 1


class ArchitectureError(OrchestratorError):
    """The model graphs or initial parameters are unusable."""


@dataclass(frozen=True)
class Architecture:
    graphs: dict[str, bytes] = field(repr=False)
    spec: dict[str, Any] | None = None


def pack_architecture(arch: Architecture) -> bytes:
    return bytes(msgpack.packb({"format": _FORMAT, "graphs": arch.graphs, "spec": arch.spec},
                               use_bin_type=True))


def unpack_architecture(blob: bytes) -> Architecture:
    try:
        raw = msgpack.unpackb(blob, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ArchitectureError(f"unreadable architecture blob: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise ArchitectureError("architecture blob has an unknown format")
    graphs = raw.get("graphs")
    if not isinstance(graphs, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in graphs.items()):
        raise ArchitectureError("architecture blob has no graphs")
    spec = raw.get("spec")
    return Architecture(dict(graphs), spec if isinstance(spec, dict) else None)


def initial_model(cfg: ModelConfig) -> tuple[Architecture, Params]:
    """The graphs and version-0 parameters named by the config (blocking: file I/O, onnx)."""
    if cfg.spec is not None:
        built = build_model(cfg.spec)
        return Architecture(dict(built.graphs), cfg.spec.to_dict()), dict(built.params)
    assert cfg.graphs_dir is not None
    return _from_dir(cfg.graphs_dir)


def _from_dir(directory: Path) -> tuple[Architecture, Params]:
    graphs: dict[str, bytes] = {}
    for name in GRAPH_NAMES:
        path = directory / f"{name}.onnx"
        try:
            graphs[name] = path.read_bytes()
        except OSError as exc:
            raise ArchitectureError(f"model.graphs_dir: cannot read {path}: "
                                    f"{exc.strerror or exc}") from None
    path = directory / "params.npz"
    try:
        with np.load(path, allow_pickle=False) as archive:
            params = {name: np.asarray(archive[name]) for name in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ArchitectureError(f"model.graphs_dir: cannot read {path}: {exc}") from None
    if not params:
        raise ArchitectureError(f"model.graphs_dir: {path} holds no parameters")
    for name, value in params.items():
        if value.dtype != np.float32:
            raise ArchitectureError(f"model.graphs_dir: parameter {name!r} is {value.dtype}, "
                                    "not float32")
    return Architecture(graphs, None), params
