"""Gradients of element-wise arithmetic, activations, (log-)softmax and matrix products."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.models._graph import FLOAT

from .emit import Emitter, NodeView, unbroadcast
from .rules import Grads, rule


def _gy(gys: Sequence[str | None]) -> str:
    grad = gys[0]
    assert grad is not None, "a rule runs only for a node whose output reaches the loss"
    return grad


@rule("Add", diff=(0, 1))
def _add(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    gy = _gy(gys)
    return [unbroadcast(g, n, gy, n.inputs[i], i) if need[i] else None for i in (0, 1)]


@rule("Sub", diff=(0, 1))
def _sub(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    gy = _gy(gys)
    ga = unbroadcast(g, n, gy, n.inputs[0], 0) if need[0] else None
    gb = unbroadcast(g, n, g.op("Neg", gy), n.inputs[1], 1) if need[1] else None
    return [ga, gb]


@rule("Mul", diff=(0, 1))
def _mul(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    gy = _gy(gys)
    a, b = n.inputs
    ga = unbroadcast(g, n, g.op("Mul", gy, b), a, 0) if need[0] else None
    gb = unbroadcast(g, n, g.op("Mul", gy, a), b, 1) if need[1] else None
    return [ga, gb]


@rule("Div", diff=(0, 1))
def _div(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    gy = _gy(gys)
    a, b = n.inputs
    ga = unbroadcast(g, n, g.op("Div", gy, b), a, 0) if need[0] else None
    gb = None
    if need[1]:  # d(a/b)/db = -(a/b)/b
        gb = unbroadcast(g, n, g.op("Neg", g.op("Div", g.op("Mul", gy, n.outputs[0]), b)), b, 1)
    return [ga, gb]


@rule("Neg")
def _neg(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    return [g.op("Neg", _gy(gys))]


@rule("Identity", "Cast")
def _identity(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    if n.op_type == "Cast" and n.attr("to", 0) != 1:
        raise n.fail("only a Cast to float can sit on the path to the loss")
    return [_gy(gys)]


@rule("Relu")
def _relu(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    # gy * (x > 0) as a float mask: onnxruntime's Mul beats Where against a broadcast
    # scalar by about 2.5x on conv-sized tensors (the bench agent's conv1d step)
    positive = g.op("Cast", g.op("Greater", n.inputs[0], g.const(0.0)), to=FLOAT)
    return [g.op("Mul", _gy(gys), positive)]


@rule("LeakyRelu")
def _leaky(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    gy = _gy(gys)
    alpha = g.const(float(n.attr("alpha", 0.01)))
    positive = g.op("Greater", n.inputs[0], g.const(0.0))
    return [g.op("Where", positive, gy, g.op("Mul", gy, alpha))]


@rule("Elu")
def _elu(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    # for x <= 0, y = alpha * (exp(x) - 1), so dy/dx = y + alpha
    gy = _gy(gys)
    alpha = g.const(float(n.attr("alpha", 1.0)))
    positive = g.op("Greater", n.inputs[0], g.const(0.0))
    return [g.op("Where", positive, gy, g.op("Mul", gy, g.op("Add", n.outputs[0], alpha)))]


@rule("Sigmoid")
def _sigmoid(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    y = n.outputs[0]
    slope = g.op("Mul", y, g.op("Sub", g.const(1.0), y))
    return [g.op("Mul", _gy(gys), slope)]


@rule("Tanh")
def _tanh(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    y = n.outputs[0]
    slope = g.op("Sub", g.const(1.0), g.op("Mul", y, y))
    return [g.op("Mul", _gy(gys), slope)]


@rule("Softmax")
def _softmax(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    # opset-13 semantics: one axis; dx = y * (dy - sum(dy * y, axis))
    gy, y = _gy(gys), n.outputs[0]
    axis = g.ints([int(n.attr("axis", -1))])
    dot = g.op("ReduceSum", g.op("Mul", gy, y), axis, keepdims=1)
    return [g.op("Mul", y, g.op("Sub", gy, dot))]


@rule("LogSoftmax")
def _log_softmax(g: Emitter, n: NodeView, gys: Sequence[str | None],
                 need: Sequence[bool]) -> Grads:
    # dx = dy - softmax(x) * sum(dy, axis)
    gy, y = _gy(gys), n.outputs[0]
    axis = g.ints([int(n.attr("axis", -1))])
    total = g.op("ReduceSum", gy, axis, keepdims=1)
    return [g.op("Sub", gy, g.op("Mul", g.op("Exp", y), total))]


def _swap_last(g: Emitter, tensor: str, rank: int) -> str:
    perm = [*range(rank - 2), rank - 1, rank - 2]
    return g.op("Transpose", tensor, perm=perm)


@rule("MatMul", diff=(0, 1))
def _matmul(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    gy = _gy(gys)
    a, b = n.inputs
    ra, rb = len(n.in_shape(0)), len(n.in_shape(1))
    if ra < 2 or rb < 2:
        raise n.fail("MatMul with a 1-D operand is not supported; reshape it to 2-D")
    ga = gb = None
    stacked = n.out_shape()[:-2]  # the broadcast batch-of-matrices dimensions
    if need[0]:
        ga = unbroadcast(g, n, g.op("MatMul", gy, _swap_last(g, b, rb)), a, 0,
                         (*stacked, *n.in_shape(0)[-2:]))
    if need[1]:
        gb = unbroadcast(g, n, g.op("MatMul", _swap_last(g, a, ra), gy), b, 1,
                         (*stacked, *n.in_shape(1)[-2:]))
    return [ga, gb]


@rule("Gemm", diff=(0, 1, 2))
def _gemm(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    # Y = alpha * A' B' + beta * C, with A' = Aᵀ if transA and B' = Bᵀ if transB
    gy = _gy(gys)
    a, b = n.inputs[0], n.inputs[1]
    ta, tb = int(n.attr("transA", 0)), int(n.attr("transB", 0))
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    grads: Grads = [None] * len(n.inputs)
    if need[0]:
        grads[0] = (g.op("Gemm", b, gy, transA=tb, transB=1, alpha=alpha) if ta
                    else g.op("Gemm", gy, b, transB=1 - tb, alpha=alpha))
    if need[1]:
        grads[1] = (g.op("Gemm", gy, a, transA=1, transB=ta, alpha=alpha) if tb
                    else g.op("Gemm", a, gy, transA=1 - ta, alpha=alpha))
    if len(n.inputs) > 2 and n.inputs[2] and need[2]:
        scaled = g.op("Mul", gy, g.const(beta)) if beta != 1.0 else gy
        grads[2] = unbroadcast(g, n, scaled, n.inputs[2], 2)
    return grads
