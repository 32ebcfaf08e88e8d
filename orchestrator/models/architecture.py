"""How a model architecture (its ONNX graphs) is kept in the store, and where it comes from.

The store keeps an architecture as one opaque blob (``Store.put_architecture``); fedmq's blob is
``msgpack {"format": 1, "graphs": {role: onnx bytes}, "spec": ModelSpec dict or None}``.
A federation's architecture is fixed at its first start: built from ``[model]`` (a built-in
``ModelSpec``) or read from ``graphs_dir`` (``train_step.onnx``, ``eval.onnx``, ``infer.onnx``
and initial parameters in ``params.npz``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import onnx
from google.protobuf.message import DecodeError

from orchestrator.config import ModelConfig
from orchestrator.errors import OrchestratorError
from orchestrator.models import GRAPH_NAMES, build_model
from orchestrator.models.builder import META_SPEC
from schemas.tensors import Params

__all__ = ["Architecture", "ArchitectureError", "initial_model", "model_signature",
           "pack_architecture", "unpack_architecture"]

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


def model_signature(cfg: ModelConfig) -> tuple[int, int]:
    """``(n_features, n_classes)`` of the configured model, for enrollment bundles (so an agent
    can check its data before it enrolls); ``n_classes`` is 0 for a model without labels, and
    both are 0 when ``graphs_dir`` cannot tell (blocking: reads a file)."""
    if cfg.spec is not None:
        return cfg.spec.n_features, cfg.spec.n_classes if cfg.spec.supervised else 0
    assert cfg.graphs_dir is not None
    try:
        model = onnx.load_model(cfg.graphs_dir / "train_step.onnx", load_external_data=False)
    except (OSError, ValueError, DecodeError):
        return 0, 0
    inputs = {i.name: i for i in model.graph.input}
    dims = inputs["X"].type.tensor_type.shape.dim if "X" in inputs else []
    features = dims[1].dim_value if len(dims) == 2 else 0
    if "y" not in inputs:
        return features, 0
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        classes = json.loads(meta[META_SPEC])["n_classes"]
    except (KeyError, TypeError, ValueError):
        return features, 0
    return features, classes if isinstance(classes, int) and classes >= 2 else 0
