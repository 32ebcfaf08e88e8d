"""Every gradient rule against float64 central differences on a tiny model containing it.

The analytic gradient comes from the compiled float32 train_step (lr=1, mu=0: p - p_new);
the numeric one from a float64 copy of the compiled eval graph run by onnx's reference
evaluator, so finite differences carry no float32 rounding. The error is
max |analytic - numeric| / max |numeric| per parameter, at most 1e-3.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orchestrator.models.importer import supported_ops

from ._build import Net, check

TOLERANCE = 1e-3
Case = Callable[[], tuple[bytes, str]]


def _dense(net: Net, h: str, fan_in: int, fan_out: int = 3) -> str:
    return net.op("Gemm", h, net.param((fan_in, fan_out)), net.param((fan_out,)))


def _activation(op: str, **attrs: object) -> Case:
    def build() -> tuple[bytes, str]:
        net = Net((4,))
        h = net.op(op, _dense(net, "input", 4, 5), **attrs)
        return net.build(_dense(net, h, 5)), "cross_entropy"
    return build


def _binary(op: str, shape: tuple[int, ...], offset: float = 0.0) -> Case:
    def build() -> tuple[bytes, str]:
        net = Net((4,))
        h = _dense(net, "input", 4, 4)
        h = net.op(op, h, net.param(shape, offset=offset))
        h = net.op(op, net.param((1, 4), offset=offset), h) if op != "Div" else h
        return net.build(_dense(net, h, 4)), "cross_entropy"
    return build


def _gemm() -> tuple[bytes, str]:
    net = Net((4,))
    h = net.op("Transpose", _dense(net, "input", 4, 5), perm=[1, 0])  # [5, N]
    out = net.op("Gemm", h, net.param((3, 5)), net.param((3,)), transA=1, transB=1,
                 alpha=0.7, beta=0.3)
    out = net.op("Gemm", net.param((3, 3)), out, net.param((1, 1)), transA=1, transB=1)
    return net.build(net.op("Transpose", out, perm=[1, 0])), "cross_entropy"


def _matmul() -> tuple[bytes, str]:
    net = Net((2, 3))
    h = net.op("MatMul", "input", net.param((3, 4)))  # batched: [N, 2, 4]
    h = net.op("MatMul", net.param((2, 4)), net.op("Transpose", h, perm=[0, 2, 1]))
    flat = net.op("Flatten", h, axis=1)  # [N, 4]
    return net.build(net.op("Add", net.op("MatMul", flat, net.param((4, 3))),
                            net.param((3,)))), "cross_entropy"


def _softmax_inside(op: str) -> Case:
    def build() -> tuple[bytes, str]:
        net = Net((4,))
        h = net.op(op, _dense(net, "input", 4, 5), axis=1)
        return net.build(_dense(net, h, 5)), "cross_entropy"
    return build


def _conv(rank: int, stride: int = 2, pad: int = 1, dilation: int = 1, group: int = 2,
          length: int = 7, kernel: int = 3, channels: int = 2) -> Case:
    def build() -> tuple[bytes, str]:
        spatial = (length,) * rank
        net = Net((channels, *spatial))
        x = net.op("Mul", "input", net.param((channels,) + (1,) * rank, offset=1.0))
        out_channels = 2 * group
        w = net.param((out_channels, channels // group) + (kernel,) * rank)
        h = net.op("Conv", x, w, net.param((out_channels,)), strides=[stride] * rank,
                   pads=[pad] * 2 * rank, dilations=[dilation] * rank, group=group)
        return net.build(net.op("Flatten", h, axis=1)), "mse_or_ce"
    return build


def _pool(op: str, **attrs: object) -> Case:
    def build() -> tuple[bytes, str]:
        net = Net((2, 5, 5))
        x = net.op("Mul", "input", net.param((2, 1, 1), offset=1.0))
        h = net.op(op, x, **attrs)
        return net.build(net.op("Flatten", h, axis=1)), "cross_entropy"
    return build


def _batch_norm() -> tuple[bytes, str]:
    net = Net((2, 3))
    mean, var = net.param((2,)), net.param((2,), scale=0.1, offset=1.0)
    x = net.op("Mul", "input", net.param((2, 1), offset=1.0))
    h = net.op("BatchNormalization", x, net.param((2,), offset=1.0), net.param((2,)),
               mean, var, epsilon=1e-3)
    return net.build(net.op("Flatten", h, axis=1)), "cross_entropy"


def _shape_ops() -> tuple[bytes, str]:
    net = Net((6,))
    h = _dense(net, "input", 6, 6)
    h = net.op("Reshape", h, net.const([0, 2, 3]))
    h = net.op("Unsqueeze", h, net.const([1]))  # [N, 1, 2, 3]
    h = net.op("Transpose", h, perm=[0, 1, 3, 2])
    h = net.op("Squeeze", h, net.const([1]))  # [N, 3, 2]
    h = net.op("Dropout", net.op("Identity", h), net.const(0.5, float))
    h = net.op("Cast", h, to=1)
    h = net.op("Concat", h, net.op("Neg", h), axis=2)  # [N, 3, 4]
    return net.build(net.op("Flatten", h, axis=1)), "cross_entropy"


def _constant() -> tuple[bytes, str]:
    net = Net((4,))
    c = net.op("Constant", value_floats=[0.5, -1.0, 2.0])
    return net.build(net.op("Mul", _dense(net, "input", 4), c)), "cross_entropy"


CASES: dict[str, Case] = {
    "Gemm": _gemm, "MatMul": _matmul,
    "Add": _binary("Add", (4,)), "Sub": _binary("Sub", (1, 4)), "Mul": _binary("Mul", (4,)),
    "Div": _binary("Div", (4,), offset=3.0),
    "Neg": _activation("Neg"), "Relu": _activation("Relu"),
    "LeakyRelu": _activation("LeakyRelu", alpha=0.2), "Elu": _activation("Elu", alpha=0.7),
    "Sigmoid": _activation("Sigmoid"), "Tanh": _activation("Tanh"),
    "Softmax": _softmax_inside("Softmax"), "LogSoftmax": _softmax_inside("LogSoftmax"),
    "Conv": _conv(2), "MaxPool": _pool("MaxPool", kernel_shape=[3, 3], strides=[2, 2],
                                       pads=[1, 1, 1, 1]),
    "AveragePool": _pool("AveragePool", kernel_shape=[3, 2], strides=[2, 1],
                         pads=[1, 0, 1, 1], count_include_pad=0),
    "GlobalAveragePool": _pool("GlobalAveragePool"),
    "BatchNormalization": _batch_norm,
    "Flatten": _shape_ops, "Reshape": _shape_ops, "Transpose": _shape_ops, "Squeeze": _shape_ops,
    "Unsqueeze": _shape_ops, "Concat": _shape_ops, "Identity": _shape_ops,
    "Dropout": _shape_ops, "Cast": _shape_ops, "Constant": _constant,
}


def _run(case: Case) -> float:
    data, loss = case()
    _, error = check(data, loss="cross_entropy" if loss == "mse_or_ce" else loss)
    return error


@pytest.mark.parametrize("op", supported_ops())
def test_every_registered_op_has_a_gradient_case(op: str) -> None:
    assert op in CASES, f"{op} is in the registry but has no gradient check"


@pytest.mark.parametrize("op", sorted(CASES))
def test_gradient_matches_finite_differences(op: str) -> None:
    assert _run(CASES[op]) <= TOLERANCE
