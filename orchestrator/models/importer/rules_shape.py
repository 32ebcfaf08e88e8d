"""Gradients of the ops that only move values: reshapes, transposes, concatenation."""

from __future__ import annotations

from collections.abc import Sequence

from .emit import Emitter, NodeView
from .rules import Grads, rule


def _gy(gys: Sequence[str | None]) -> str:
    grad = gys[0]
    assert grad is not None, "a rule runs only for a node whose output reaches the loss"
    return grad


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    return [g.like(_gy(gys), n.inputs[0])] + [None] * (len(n.inputs) - 1)


@rule("Dropout")
def _dropout(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    # inference graphs: Dropout is the identity (the compiler rewrites it to Identity)
    return [_gy(gys)] + [None] * (len(n.inputs) - 1)


@rule("Constant", diff=())
def _constant(g: Emitter, n: NodeView, gys: Sequence[str | None],
              need: Sequence[bool]) -> Grads:
    return []


@rule("Transpose")
def _transpose(g: Emitter, n: NodeView, gys: Sequence[str | None],
               need: Sequence[bool]) -> Grads:
    rank = len(n.in_shape(0))
    perm = [int(p) for p in n.attr("perm", list(reversed(range(rank))))]
    inverse = [perm.index(i) for i in range(rank)]
    return [g.op("Transpose", _gy(gys), perm=inverse)]


@rule("Concat", diff=None)
def _concat(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    gy = _gy(gys)
    rank = len(n.out_shape())
    axis = int(n.attr("axis", 0)) % rank
    sizes = [n.static((n.in_shape(i)[axis],), f"input {i} along the concat axis")[0]
             for i in range(len(n.inputs))]
    grads: Grads = []
    start = 0
    for i, size in enumerate(sizes):
        if need[i]:
            grads.append(g.op("Slice", gy, g.ints([start]), g.ints([start + size]),
                              g.ints([axis])))
        else:
            grads.append(None)
        start += size
    return grads
