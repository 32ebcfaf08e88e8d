"""Bake a version's parameters into its ``infer`` graph: a plain, stand-alone ONNX model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from orchestrator.errors import OrchestratorError
from orchestrator.models.builder import META_GRAPH, META_PARAMS

_DATA_INPUTS = frozenset({"X", "y", "lr", "mu"})


class ExportError(OrchestratorError, ValueError):
    """The graph or the parameters cannot be combined into an inference model."""


def export_inference(infer_graph: bytes, params: Mapping[str, np.ndarray]) -> bytes:
    """An ONNX model whose only input is ``X``, with ``params`` stored as initializers."""
    try:
        model = onnx.load_from_string(infer_graph)
    except Exception as exc:  # protobuf raises its own DecodeError, not a ValueError
        raise ExportError(f"infer graph is not a valid ONNX model: {exc}") from exc
    graph = model.graph
    declared = {vi.name: vi for vi in graph.input}
    if "X" not in declared:
        raise ExportError("infer graph has no input 'X'")
    names = _param_names(model)
    missing = [n for n in names if n not in params]
    if missing:
        raise ExportError(f"parameters missing for graph input(s): {', '.join(missing)}")
    extra = sorted(set(params) - set(names))
    if extra:
        raise ExportError(f"parameters not used by the infer graph: {', '.join(extra)}")
    initializers = []
    for name in names:
        array = np.ascontiguousarray(params[name], dtype=np.float32)
        expected = _static_shape(declared[name])
        if expected is not None and tuple(array.shape) != expected:
            raise ExportError(
                f"parameter {name!r} has shape {tuple(array.shape)}, graph expects {expected}"
            )
        if not np.all(np.isfinite(array)):
            raise ExportError(f"parameter {name!r} holds NaN or Inf")
        initializers.append(numpy_helper.from_array(array, name))
    kept = [vi for vi in graph.input if vi.name not in set(names)]
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.extend(initializers)
    props = {p.key: p.value for p in model.metadata_props}
    props[META_GRAPH] = "export"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported model does not validate: {exc}") from exc
    data: bytes = model.SerializeToString()
    return data


def _param_names(model: onnx.ModelProto) -> list[str]:
    props = {p.key: p.value for p in model.metadata_props}
    listed = props.get(META_PARAMS)
    if listed:
        return [n for n in listed.split(",") if n]
    return [
        vi.name
        for vi in model.graph.input
        if vi.name not in _DATA_INPUTS and not vi.name.endswith("_global")
    ]


def _static_shape(value_info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    dims = value_info.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)
