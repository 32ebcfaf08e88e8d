"""The forward part of an imported model: its nodes after folding, constants, parameters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import fold
from .emit import Shape
from .errors import ModelImportError
from .registry import RULES

_MIN_OPSET = 13


@dataclass
class Forward:
    nodes: list[onnx.NodeProto]
    consts: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    input_name: str
    input_shape: tuple[int, ...]
    output: str
    shapes: dict[str, Shape]
    opset: int


def load(data: bytes) -> onnx.ModelProto:
    try:
        model: onnx.ModelProto = onnx.ModelProto.FromString(bytes(data))
        onnx.checker.check_model(model)
    except Exception as exc:  # DecodeError, ValidationError, ...
        raise ModelImportError(f"not a readable ONNX model: {' '.join(str(exc).split())}"
                               ) from None
    if not model.graph.node:
        raise ModelImportError("not a readable ONNX model: the graph has no nodes")
    return model


def opset_of(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions or versions[0] < _MIN_OPSET:
        raise ModelImportError(f"the model uses ONNX opset {versions[0] if versions else '?'};"
                               f" export it with opset {_MIN_OPSET} or newer")
    return int(versions[0])


def pick_output(graph: onnx.GraphProto) -> str:
    """The model's score tensor: the input of a ZipMap (skl2onnx's probability map) if there
    is one, else the one float tensor output (integer outputs such as labels are ignored)."""
    for node in graph.node:
        if node.op_type == "ZipMap":
            return str(node.input[0])
    floats = [o.name for o in graph.output
              if o.type.HasField("tensor_type")
              and o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    if len(floats) != 1:
        raise ModelImportError("the model needs exactly one float output (logits, "
                               "probabilities or a reconstruction); it has "
                               f"{', '.join(floats) or 'none'}")
    return str(floats[0])


def prune(nodes: Sequence[onnx.NodeProto], output: str) -> list[onnx.NodeProto]:
    """The nodes ``output`` depends on, in their original (topological) order."""
    wanted = {output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(o in wanted for o in node.output):
            kept.append(node)
            wanted.update(i for i in node.input if i)
    return kept[::-1]


def choose_params(nodes: Sequence[onnx.NodeProto], floats: dict[str, np.ndarray],
                  freeze: Sequence[str]) -> list[str]:
    """Float initializers read by a differentiable input of some node, minus ``freeze``."""
    unknown = [name for name in freeze if name not in floats]
    if unknown:
        raise ModelImportError(f"--freeze: no float initializer named {unknown[0]!r} "
                               f"(there are: {', '.join(floats) or 'none'})")
    used: list[str] = []
    for node in nodes:
        rule = RULES.get(node.op_type)
        for i, name in enumerate(node.input):
            trainable = rule is None or rule.differentiable(i)
            if name in floats and trainable and name not in used and name not in freeze:
                used.append(name)
    return used


def fold_nodes(nodes: Sequence[onnx.NodeProto], consts: dict[str, np.ndarray],
               shapes: dict[str, Shape], opset: int) -> list[onnx.NodeProto]:
    """Evaluate every node whose inputs are constants (``consts`` grows); keep the rest."""
    kept: list[onnx.NodeProto] = []
    for node in nodes:
        if node.op_type == "Constant":
            consts[node.output[0]] = fold.constant_value(node)
            continue
        if node.op_type == "Shape" and node.input[0] not in consts:
            value = fold.shape_value(node, shapes.get(node.input[0]) or (None,))
            if value is not None:
                consts[node.output[0]] = value
                continue
        if fold.foldable(node, consts):
            inputs = [consts[name] for name in node.input if name]
            for name, value in zip(node.output, fold.evaluate(node, inputs, opset), strict=False):
                consts[name] = value
            continue
        kept.append(_rewrite_batch(node, consts))
    return kept


def _rewrite_batch(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> onnx.NodeProto:
    for i, name in enumerate(node.input):
        value = consts.get(name)
        if value is None or not fold.holds_batch(value):
            continue
        if node.op_type != "Reshape" or i != 1:
            raise ModelImportError(f"{node.op_type} node {node.name!r}: its shape arithmetic "
                                   "depends on the batch size in a way the importer cannot "
                                   "fold")
        target = f"{name}__folded"
        consts[target] = fold.reshape_target(node, value)
        node = _copy(node)
        node.input[i] = target
    return node


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def as_model(forward: Forward) -> onnx.ModelProto:
    """The folded forward graph as a model, for shape inference."""
    inits = [numpy_helper.from_array(v, n) for n, v in {**forward.consts,
                                                        **forward.params}.items()]
    x = helper.make_tensor_value_info(forward.input_name, onnx.TensorProto.FLOAT,
                                      ["N", *forward.input_shape])
    y = helper.make_empty_tensor_value_info(forward.output)
    graph = helper.make_graph(forward.nodes, "forward", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", forward.opset)])
