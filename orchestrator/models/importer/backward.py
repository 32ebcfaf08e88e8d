"""Reverse-mode differentiation of a forward graph, one registered rule per node."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from .emit import Emitter, NodeView
from .errors import ModelImportError
from .registry import RULES


def needs_gradient(nodes: Sequence[onnx.NodeProto], sources: set[str]) -> set[str]:
    """Tensors that depend on ``sources`` (the parameters) through differentiable inputs."""
    active = set(sources)
    for node in nodes:
        rule = RULES.get(node.op_type)
        if rule is None:
            if any(name in active for name in node.input):
                raise ModelImportError(f"unsupported op {node.op_type} (node "
                                       f"{node.name or node.output[0]!r}) on the path from "
                                       "the parameters to the loss")
            continue
        if any(name in active and rule.differentiable(i) for i, name in enumerate(node.input)):
            active.update(o for o in node.output if o)
    return active


def differentiate(
    g: Emitter,
    views: Sequence[NodeView],
    seed: tuple[str, str],
    wanted: Sequence[str],
    active: set[str],
) -> dict[str, str | None]:
    """Gradients of the loss for each of ``wanted`` (renamed parameter names; ``None`` when
    a parameter does not reach the loss). ``seed`` is (output tensor, its gradient).
    ``views`` are in forward order; ``active`` holds renamed tensors that need gradients."""
    grads: dict[str, str] = {seed[0]: seed[1]}
    for view in reversed(views):
        gys = [grads.get(o) for o in view.outputs]
        if all(gy is None for gy in gys):
            continue
        rule = RULES[view.op_type]
        need = [bool(name) and name in active and rule.differentiable(i)
                for i, name in enumerate(view.inputs)]
        if not any(need):
            continue
        for name, grad in zip(view.inputs, rule.vjp(g, view, gys, need), strict=False):
            if grad is None or not name or name not in active:
                continue
            previous = grads.get(name)
            grads[name] = grad if previous is None else g.op("Add", previous, grad)
    return {name: grads.get(name) for name in wanted}


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def view_of(node: onnx.NodeProto, rename: Callable[[str], str],
            shapes: Mapping[str, tuple[int | str | None, ...]],
            consts: Mapping[str, object]) -> NodeView:
    values = {i: np.asarray(consts[name]) for i, name in enumerate(node.input)
              if name in consts}
    attrs = attributes(node)
    return NodeView(
        op_type=node.op_type,
        name=node.name or (node.output[0] if node.output else node.op_type),
        inputs=tuple(rename(i) if i else "" for i in node.input),
        outputs=tuple(rename(o) if o else "" for o in node.output),
        in_shapes=tuple(shapes.get(i) for i in node.input),
        out_shapes=tuple(shapes.get(o) for o in node.output),
        attrs={k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()},
        consts=values,
    )
