"""Put forward nodes in the one form the gradient rules expect, and assemble the Forward."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import fold
from .emit import Shape
from .errors import ModelImportError
from .forward import Forward, as_model, choose_params, fold_nodes, opset_of, pick_output, prune

_WINDOWED = frozenset({"Conv", "MaxPool", "AveragePool"})


def prepare(model: onnx.ModelProto, freeze: Sequence[str]) -> Forward:
    """Prune to the score output, fold, choose parameters, make pads explicit."""
    graph = model.graph
    opset = opset_of(model)
    x = fold.graph_input(graph)
    input_shape = fold.input_dims(x)
    output = pick_output(graph)
    nodes = prune(list(graph.node), output)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    floats = {n: v for n, v in inits.items() if v.dtype == np.float32}
    names = choose_params(nodes, floats, freeze)
    params = {n: floats[n] for n in names}
    consts = {n: v for n, v in inits.items() if n not in params}
    shapes = fold.infer_shapes(model, x.name)
    kept = fold_nodes(nodes, consts, shapes, opset)
    forward = Forward(kept, consts, params, x.name, input_shape, output, {}, opset)
    forward.shapes = fold.infer_shapes(as_model(forward), x.name)
    forward.nodes = [canonical(node, forward.shapes) for node in kept]
    used = {name for node in forward.nodes for name in node.input}
    forward.consts = {n: v for n, v in consts.items() if n in used or n == output}
    forward.params = {n: v for n, v in params.items() if n in used}
    if output in forward.params or output == x.name:
        raise ModelImportError("the model's output is not computed from its input")
    return forward


def canonical(node: onnx.NodeProto, shapes: dict[str, Shape]) -> onnx.NodeProto:
    if node.op_type == "Dropout":
        if len(node.output) > 1 and node.output[1]:
            raise ModelImportError(f"Dropout node {node.name!r}: its mask output is used")
        return helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
    if node.op_type == "BatchNormalization":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
            raise ModelImportError(f"BatchNormalization node {node.name!r}: only inference "
                                   "mode (training_mode=0, one output) is supported")
    if node.op_type in _WINDOWED:
        return _explicit_pads(node, shapes)
    return node


def _explicit_pads(node: onnx.NodeProto, shapes: dict[str, Shape]) -> onnx.NodeProto:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto = attrs.pop("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    in_shape = shapes.get(node.input[0])
    if in_shape is None or any(not isinstance(d, int) for d in in_shape[2:]):
        raise ModelImportError(f"{node.op_type} node {node.name!r}: its spatial input size is "
                               "unknown")
    spatial = [int(d) for d in in_shape[2:] if isinstance(d, int)]
    rank = len(spatial)
    if "kernel_shape" not in attrs:
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None:
            raise ModelImportError(f"{node.op_type} node {node.name!r}: no kernel_shape")
        attrs["kernel_shape"] = [int(d) for d in weight[2:] if isinstance(d, int)]
    kernel = [int(k) for k in attrs["kernel_shape"]]
    attrs.setdefault("strides", [1] * rank)
    if node.op_type != "AveragePool" or "dilations" in attrs:
        attrs.setdefault("dilations", [1] * rank)
    pads = [int(p) for p in attrs.get("pads", [0] * 2 * rank)]
    if auto == "VALID":
        pads = [0] * 2 * rank
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(spatial, kernel, attrs["strides"], attrs.get("dilations", [1] * rank),
                          upper=auto == "SAME_UPPER")
    attrs["pads"] = pads
    return helper.make_node(node.op_type, list(node.input), list(node.output), name=node.name,
                            **attrs)


def _same_pads(spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int], *, upper: bool) -> list[int]:
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends
