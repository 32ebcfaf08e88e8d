"""Read an inference graph and fold its constant and shape arithmetic.

The batch dimension is given a sentinel size while shapes are inferred, so ``Shape`` of a
tensor becomes a constant in which the sentinel marks the batch; chains such as torch's
``Shape → Gather → Unsqueeze → Concat → Reshape`` then fold to a constant, and a Reshape
target's sentinel becomes -1 (or 0 when another entry is -1 already).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from .emit import BATCH, Shape
from .errors import ModelImportError

SENTINEL = 1_000_003  # a batch size no real model fixes, so it is recognisable in shapes
_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"})


def graph_input(graph: onnx.GraphProto) -> onnx.ValueInfoProto:
    initialized = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialized]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelImportError(f"the model must have exactly one data input, it has {names}")
    first: onnx.ValueInfoProto = inputs[0]
    return first


def input_dims(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    """The non-batch dimensions of the data input (each must be fixed)."""
    tensor = value.type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise ModelImportError(f"the data input {value.name!r} must be float32")
    dims = list(tensor.shape.dim)
    if len(dims) < 2:
        raise ModelImportError(f"the data input {value.name!r} must be [batch, ...], "
                               f"got rank {len(dims)}")
    if any(not d.HasField("dim_value") for d in dims[1:]):
        raise ModelImportError(f"the data input {value.name!r} must have fixed sizes except "
                               "the batch dimension")
    return tuple(int(d.dim_value) for d in dims[1:])


def constant_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        return numpy_helper.to_array(value)
    if attr.name in ("value_float", "value_int"):
        return np.asarray(value, np.float32 if attr.name == "value_float" else np.int64)
    if attr.name in ("value_floats", "value_ints"):
        return np.asarray(value, np.float32 if attr.name == "value_floats" else np.int64)
    raise ModelImportError(f"Constant node {node.name!r}: attribute {attr.name} is not "
                           "supported")


def infer_shapes(model: onnx.ModelProto, input_name: str) -> dict[str, Shape]:
    """Every tensor's shape with the batch dimension as ``"N"`` (``None``: unknown)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        if value.name == input_name:
            value.type.tensor_type.shape.dim[0].Clear()
            value.type.tensor_type.shape.dim[0].dim_value = SENTINEL
    try:
        inferred = shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and others
        raise ModelImportError(f"shape inference failed: {' '.join(str(exc).split())}") from None
    shapes: dict[str, Shape] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tuple(_dim(d) for d in value.type.tensor_type.shape.dim)
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    return shapes


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if not dim.HasField("dim_value"):
        return None
    value = int(dim.dim_value)
    if value == SENTINEL:
        return BATCH
    return None if value % SENTINEL == 0 else value


def evaluate(node: onnx.NodeProto, inputs: Sequence[np.ndarray], opset: int) -> list[np.ndarray]:
    """Run one node on constant inputs (onnx's reference evaluator)."""
    names = [f"in{i}" for i in range(len(inputs))]
    renamed = helper.make_node(node.op_type, [names[i] if n else "" for i, n in
                                              enumerate(node.input)],
                               [f"out{i}" for i in range(len(node.output))],
                               domain=node.domain)
    renamed.attribute.extend(node.attribute)
    try:
        session = ReferenceEvaluator(_single(renamed, names, inputs, opset))
        feeds = {n: v for n, v, used in zip(names, inputs, node.input, strict=True) if used}
        return [np.asarray(v) for v in session.run(None, feeds)]
    except Exception as exc:  # the reference evaluator raises many kinds
        raise ModelImportError(f"cannot fold {node.op_type} node {node.name!r}: "
                               f"{' '.join(str(exc).split())}") from None


def _single(node: onnx.NodeProto, names: list[str], inputs: Sequence[np.ndarray],
            opset: int) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for n, v in zip(names, inputs, strict=True)]
    outs = [helper.make_empty_tensor_value_info(o) for o in node.output]
    graph = helper.make_graph([node], "fold", ins, outs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def shape_value(node: onnx.NodeProto, shape: Shape) -> np.ndarray | None:
    """``Shape``'s output as a constant (the batch as the sentinel), if the shape is known."""
    if any(d is None for d in shape):
        return None
    dims = np.array([SENTINEL if d == BATCH else d for d in shape], dtype=np.int64)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return dims[int(start):int(end)] if isinstance(start, int) and isinstance(end, int) else None


def reshape_target(node: onnx.NodeProto, target: np.ndarray) -> np.ndarray:
    """A folded Reshape target with the batch sentinel mapped to -1 (or 0 at the front)."""
    target = target.astype(np.int64).copy()
    marked = target == SENTINEL
    if not marked.any():
        if (target % SENTINEL == 0).any() and (target != 0).all():
            raise _batch_error(node)
        return target
    if marked.sum() == 1 and not (target == -1).any():
        target[marked] = -1
    elif marked[0] and marked.sum() == 1:
        target[0] = 0
    else:
        raise _batch_error(node)
    return target


def _batch_error(node: onnx.NodeProto) -> ModelImportError:
    return ModelImportError(f"{node.op_type} node {node.name!r}: its shape arithmetic depends "
                            "on the batch size in a way the importer cannot fold")


def holds_batch(value: np.ndarray) -> bool:
    return value.dtype.kind in "iu" and bool((value == SENTINEL).any())


def foldable(node: onnx.NodeProto, consts: Mapping[str, np.ndarray]) -> bool:
    if node.op_type in _RANDOM or node.domain not in ("", "ai.onnx"):
        return False
    return all(not name or name in consts for name in node.input) and len(node.input) > 0
