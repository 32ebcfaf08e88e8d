"""Tiny ONNX models for the importer's tests, and a float64 finite-difference gradient check."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from orchestrator.models.importer import ImportedModel, compile_model


class Net:
    """An inference graph written node by node, with one data input named ``input``."""

    def __init__(self, input_shape: Sequence[int], *, seed: int = 0, opset: int = 17) -> None:
        self.input_shape = tuple(input_shape)
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._ids = itertools.count()

    def param(self, shape: Sequence[int], *, name: str | None = None, scale: float = 0.5,
              offset: float = 0.0) -> str:
        name = name or f"w{next(self._ids)}"
        value = offset + scale * self.rng.normal(size=tuple(shape))
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def const(self, value: Any, dtype: type = np.int64) -> str:
        name = f"c{next(self._ids)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: Any) -> str:
        names = [f"t{next(self._ids)}" for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names,
                                           name=f"{op_type.lower()}_{len(self.nodes)}", **attrs))
        return names[0]

    def model(self, output: str) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                          ["batch", *self.input_shape])
        y = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, "tiny", [x], [y], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        # give the output the shape inference finds, as exporters do
        del model.graph.output[:]
        model.graph.output.append(helper.make_empty_tensor_value_info(output))
        inferred = onnx.shape_inference.infer_shapes(model)
        found = [v for v in [*inferred.graph.value_info, *inferred.graph.output]
                 if v.name == output and v.type.tensor_type.HasField("shape")][:1]
        del model.graph.output[:]
        model.graph.output.extend(found or [y])
        return model

    def build(self, output: str) -> bytes:
        data: bytes = self.model(output).SerializeToString()
        return data


def to_double(graph: bytes) -> onnx.ModelProto:
    """A float64 copy of a compiled graph (for finite differences without float32 noise)."""
    model = onnx.ModelProto.FromString(graph)
    g = model.graph
    for value in [*g.input, *g.output, *g.value_info]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for i, tensor in enumerate(g.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor).astype(np.float64)
            g.initializer[i].CopyFrom(numpy_helper.from_array(array, tensor.name))
    for node in g.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
    return model


def gradient_error(imported: ImportedModel, X: np.ndarray, y: np.ndarray | None,
                   *, float32: bool = False) -> float:
    """max |analytic - central difference| / max |central difference|, over all parameters;
    the analytic gradient is read from train_step (lr=1, mu=0) as p - p_new.

    The differences run on a float64 copy of the eval graph in onnx's reference evaluator,
    or (``float32``) on the eval graph in onnxruntime with a larger step: the reference
    evaluator mis-computes pooling with unequal begin/end pads (its loss differs from
    onnxruntime's at the same point), so those cases use onnxruntime's own forward."""
    params = imported.params
    feeds: dict[str, np.ndarray] = {"X": X.astype(np.float32)}
    if y is not None:
        feeds["y"] = y
    train = ort.InferenceSession(imported.graphs["train_step"])
    step = {**params, **feeds, "lr": np.array(1.0, np.float32), "mu": np.array(0.0, np.float32),
            **{f"{n}_global": v for n, v in params.items()}}
    new = train.run([f"{n}_new" for n in params], step)
    analytic = {n: (params[n].astype(np.float64) - p) for n, p in zip(params, new, strict=True)}
    dtype = np.float32 if float32 else np.float64
    eps = 1e-2 if float32 else 1e-6  # float32: rounding ~1e-7/eps, truncation ~eps²
    evaluator: Any = (ort.InferenceSession(imported.graphs["eval"]) if float32
                      else ReferenceEvaluator(to_double(imported.graphs["eval"])))
    base = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in feeds.items()}
    point = {n: v.astype(dtype) for n, v in params.items()}

    def loss() -> float:
        return float(evaluator.run(["loss"], {**point, **base})[0])

    worst = 0.0
    for name, value in point.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            keep = value[index]
            value[index] = keep + eps
            up = loss()
            value[index] = keep - eps
            down = loss()
            value[index] = keep
            numeric[index] = (up - down) / (2.0 * eps)
        scale = max(float(np.abs(numeric).max()), 1e-4)
        worst = max(worst, float(np.abs(analytic[name] - numeric).max()) / scale)
    return worst


def check(data: bytes, *, loss: str = "cross_entropy", batch: int = 5, seed: int = 1,
          float32: bool = False, **options: Any) -> tuple[ImportedModel, float]:
    imported = compile_model(data, loss=loss, **options)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(batch, imported.n_features)).astype(np.float32)
    y = rng.integers(0, imported.n_classes, batch) if loss != "mse" else None
    return imported, gradient_error(imported, X, y, float32=float32)
