"""Writing graphs for the importer: multi-output nodes, shapes of forward tensors, broadcasting.

``Dim`` values in shapes are ints, ``"N"`` for the batch dimension, or ``None`` when the
compiler could not tell (a dimension depending on the batch size in another way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from orchestrator.models._graph import GraphBuilder

from .errors import ModelImportError

BATCH = "N"
Dim = int | str | None
Shape = tuple[Dim, ...]


class Emitter(GraphBuilder):
    """A :class:`GraphBuilder` that also writes nodes with several (or named) outputs."""

    def node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str],
             **attrs: Any) -> None:
        self._nodes.append(helper.make_node(op_type, list(inputs), list(outputs),
                                            name=f"n_{outputs[0]}", **attrs))

    def initializer(self, name: str, value: np.ndarray) -> None:
        """An initializer under a given name (the forward graph's own constants)."""
        self._initializers.append(numpy_helper.from_array(np.asarray(value), name))

    def copy(self, node: onnx.NodeProto) -> None:
        """A node written elsewhere (the model's own, renamed)."""
        self._nodes.append(node)

    def fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._ids)}"

    def ints(self, values: Sequence[int]) -> str:
        return self.const(list(values), np.int64)

    def shape_of(self, tensor: str) -> str:
        return self.op("Shape", tensor)

    def like(self, grad: str, tensor: str) -> str:
        """``grad`` reshaped to the shape of ``tensor`` (same element count)."""
        return self.op("Reshape", grad, self.shape_of(tensor))


@dataclass(frozen=True)
class NodeView:
    """One forward node as the gradient rules see it: renamed tensors, shapes, attributes."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    in_shapes: tuple[Shape | None, ...]
    out_shapes: tuple[Shape | None, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    consts: Mapping[int, np.ndarray] = field(default_factory=dict)

    def attr(self, key: str, default: Any) -> Any:
        return self.attrs.get(key, default)

    def in_shape(self, index: int) -> Shape:
        shape = self.in_shapes[index] if index < len(self.in_shapes) else None
        if shape is None:
            raise ModelImportError(f"{self.op_type} node {self.name!r}: the shape of input "
                                   f"{index} is unknown, so its gradient cannot be written")
        return shape

    def out_shape(self, index: int = 0) -> Shape:
        shape = self.out_shapes[index] if index < len(self.out_shapes) else None
        if shape is None:
            raise ModelImportError(f"{self.op_type} node {self.name!r}: the shape of output "
                                   f"{index} is unknown, so its gradient cannot be written")
        return shape

    def static(self, shape: Shape, what: str) -> tuple[int, ...]:
        """``shape`` with every dimension known (non-batch use: spatial sizes, channels)."""
        if any(not isinstance(d, int) for d in shape):
            raise ModelImportError(f"{self.op_type} node {self.name!r}: {what} must have "
                                   f"fixed sizes, got {show(shape)}")
        return tuple(int(d) for d in shape if isinstance(d, int))

    def fail(self, why: str) -> ModelImportError:
        return ModelImportError(f"{self.op_type} node {self.name!r}: {why}")


def broadcast_axes(node: NodeView, operand: Shape, result: Shape) -> list[int]:
    """Axes of ``result`` that numpy broadcasting expanded ``operand`` along."""
    lead = len(result) - len(operand)
    if lead < 0:
        raise node.fail(f"operand of shape {show(operand)} is wider than the result")
    axes = list(range(lead))
    for i, dim in enumerate(operand):
        out = result[lead + i]
        if dim == out and dim is not None:
            continue
        if dim == 1:
            axes.append(lead + i)
        else:
            raise node.fail(f"cannot tell how {show(operand)} broadcasts to {show(result)}")
    return axes


def unbroadcast(g: Emitter, node: NodeView, grad: str, operand: str, index: int,
                result: Shape | None = None) -> str:
    """The gradient of a broadcast operand: ``grad`` (of shape ``result``, by default the
    node's output shape) summed back to the operand's shape."""
    axes = broadcast_axes(node, node.in_shape(index), result or node.out_shape())
    if not axes:
        return grad
    summed = g.op("ReduceSum", grad, g.ints(axes), keepdims=1)
    return g.like(summed, operand)


def show(shape: Shape | Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"

