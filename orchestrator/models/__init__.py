"""Built-in model family: ONNX graphs with gradients written out, and plain-ONNX export.

``build_model(ModelSpec(...))`` returns the ``train_step``, ``eval`` and ``infer`` graphs (the
parameters are graph inputs) plus initial parameters; ``export_inference`` bakes a version's
parameters into a stand-alone inference model.
"""

from orchestrator.models.builder import (
    GRAPH_NAMES,
    META_GRAPH,
    META_KIND,
    META_PARAMS,
    META_SPEC,
    BuiltModel,
    build_model,
    init_params,
    param_shapes,
)
from orchestrator.models.export import ExportError, export_inference
from orchestrator.models.spec import ACTIVATIONS, KINDS, ModelSpec

__all__ = [
    "ACTIVATIONS",
    "GRAPH_NAMES",
    "KINDS",
    "META_GRAPH",
    "META_KIND",
    "META_PARAMS",
    "META_SPEC",
    "BuiltModel",
    "ExportError",
    "ModelSpec",
    "build_model",
    "export_inference",
    "init_params",
    "param_shapes",
]
