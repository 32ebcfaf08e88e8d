"""Gradients of convolution, pooling and inference-mode batch normalization.

The compiler has made every pad explicit (``auto_pad`` resolved) before these run, and the
spatial sizes of inputs and outputs are fixed, so output paddings and divisors are computed
here once, in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import TensorProto, helper

from .emit import Emitter, NodeView
from .rules import Grads, rule


def _gy(gys: Sequence[str | None]) -> str:
    grad = gys[0]
    assert grad is not None, "a rule runs only for a node whose output reaches the loss"
    return grad


class _Window:
    """Kernel, strides, dilations and pads of a Conv or pool node, with spatial sizes."""

    def __init__(self, n: NodeView, kernel: Sequence[int]) -> None:
        rank = len(kernel)
        self.kernel = [int(k) for k in kernel]
        self.strides = [int(s) for s in n.attr("strides", [1] * rank)]
        self.dilations = [int(d) for d in n.attr("dilations", [1] * rank)]
        self.pads = [int(p) for p in n.attr("pads", [0] * 2 * rank)]
        self.inner = n.static(n.in_shape(0)[2:], "the spatial input")
        self.outer = n.static(n.out_shape()[2:], "the spatial output")
        self.axes = list(range(2, 2 + rank))

    def output_padding(self) -> list[int]:
        """What ConvTranspose needs to give back exactly the forward input's size."""
        rank = len(self.kernel)
        return [
            self.inner[i] + self.pads[i] + self.pads[i + rank] - (self.outer[i] - 1)
            * self.strides[i] - (self.kernel[i] - 1) * self.dilations[i] - 1
            for i in range(rank)
        ]

    def transpose(self, g: Emitter, grad: str, weight: str, group: int) -> str:
        return g.op("ConvTranspose", grad, weight, strides=self.strides, pads=self.pads,
                    dilations=self.dilations, group=group, kernel_shape=self.kernel,
                    output_padding=self.output_padding())


@rule("Conv", diff=(0, 1, 2))
def _conv(g: Emitter, n: NodeView, gys: Sequence[str | None], need: Sequence[bool]) -> Grads:
    gy = _gy(gys)
    w = n.inputs[1]
    w_shape = n.static(n.in_shape(1), "the weight")
    win = _Window(n, w_shape[2:])
    group = int(n.attr("group", 1))
    grads: Grads = [None] * len(n.inputs)
    if need[0]:
        grads[0] = win.transpose(g, gy, w, group)
    if need[1]:
        grads[1] = _conv_weight_grad(g, n, win, gy, group)
    if len(n.inputs) > 2 and n.inputs[2] and need[2]:
        grads[2] = g.op("ReduceSum", gy, g.ints([0, *win.axes]), keepdims=0)
    return grads


def _conv_weight_grad(g: Emitter, n: NodeView, win: _Window, gy: str, group: int) -> str:
    """dW[m, c, k] = sum over batch and output positions of gy[n, m, o] * x[n, c, o*s + k*d]:
    itself a Conv of x (batch and channels swapped) with gy as the kernel, stride and dilation
    trading places; per group, the groups' batches side by side as channels."""
    channels = n.static(n.in_shape(0)[1:2], "the input channels")[0]
    spatial = list(win.inner)
    rank = len(spatial)
    x = g.op("Reshape", n.inputs[0], g.ints([0, group, channels // group, *spatial]))
    x = g.op("Transpose", x, perm=[2, 1, 0, *range(3, 3 + rank)])
    x = g.op("Reshape", x, g.ints([channels // group, -1, *spatial]))
    kernel = g.op("Transpose", gy, perm=[1, 0, *win.axes])
    full = g.op("Conv", x, kernel, strides=win.dilations, dilations=win.strides,
                pads=win.pads, group=group)
    cut = g.op("Slice", full, g.ints([0] * rank), g.ints(win.kernel), g.ints(win.axes))
    return g.op("Transpose", cut, perm=[1, 0, *win.axes])


@rule("MaxPool")
def _max_pool(g: Emitter, n: NodeView, gys: Sequence[str | None],
              need: Sequence[bool]) -> Grads:
    """The gradient goes to the element MaxPool's own Indices output names: on a tie, the
    one onnxruntime picks (the first in the window), as in torch; overlapping windows add."""
    if int(n.attr("storage_order", 0)) != 0:
        raise n.fail("MaxPool with storage_order=1 is not supported")
    x = n.inputs[0]
    attrs = {k: v for k, v in n.attrs.items() if k != "storage_order"}
    values, indices = g.fresh("maxpool_values"), g.fresh("maxpool_indices")
    g.node("MaxPool", [x], [values, indices], **attrs)
    size = g.op("Reshape", g.op("Size", x), g.ints([1]))
    zero = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])
    zeros = g.op("ConstantOfShape", size, value=zero)
    flat = g.ints([-1])
    scattered = g.op("ScatterElements", zeros, g.op("Reshape", indices, flat),
                     g.op("Reshape", _gy(gys), flat), axis=0, reduction="add")
    return [g.like(scattered, x)]


def _window_counts(win: _Window, include_pad: bool) -> np.ndarray:
    """How many elements each AveragePool window divides by, per output position."""
    rank = len(win.kernel)
    per_axis = []
    for i in range(rank):
        begin, end = win.pads[i], win.pads[i + rank]
        low, high = (-begin, win.inner[i] + end) if include_pad else (0, win.inner[i])
        starts = np.arange(win.outer[i]) * win.strides[i] - begin
        stops = starts + win.kernel[i]
        per_axis.append(np.minimum(stops, high) - np.maximum(starts, low))
    counts = per_axis[0].astype(np.float64)
    for axis_counts in per_axis[1:]:
        counts = np.multiply.outer(counts, axis_counts)
    return counts.reshape((1, 1, *win.outer)).astype(np.float32)


@rule("AveragePool")
def _average_pool(g: Emitter, n: NodeView, gys: Sequence[str | None],
                  need: Sequence[bool]) -> Grads:
    if int(n.attr("ceil_mode", 0)) != 0:
        raise n.fail("AveragePool with ceil_mode=1 is not supported")
    kernel = [int(k) for k in n.attr("kernel_shape", [])]
    win = _Window(n, kernel)
    if any(d != 1 for d in win.dilations):
        raise n.fail("AveragePool with dilations is not supported")
    counts = _window_counts(win, bool(n.attr("count_include_pad", 0)))
    scaled = g.op("Div", _gy(gys), g.const(counts))
    # every (sample, channel) plane on its own: a 1-channel ConvTranspose with a box of ones
    planes = g.op("Reshape", scaled, g.ints([-1, 1, *win.outer]))
    ones = g.const(np.ones((1, 1, *win.kernel), dtype=np.float32))
    return [g.like(win.transpose(g, planes, ones, 1), n.inputs[0])]


@rule("GlobalAveragePool")
def _global_average_pool(g: Emitter, n: NodeView, gys: Sequence[str | None],
                         need: Sequence[bool]) -> Grads:
    spatial = n.static(n.in_shape(0)[2:], "the spatial input")
    scaled = g.op("Div", _gy(gys), g.const(float(np.prod(spatial))))
    return [g.op("Expand", scaled, g.shape_of(n.inputs[0]))]


@rule("BatchNormalization", diff=(0, 1, 2))
def _batch_norm(g: Emitter, n: NodeView, gys: Sequence[str | None],
                need: Sequence[bool]) -> Grads:
    """Inference mode: y = scale * (x - mean) / sqrt(var + eps) + bias, mean and var fixed."""
    gy = _gy(gys)
    if 3 not in n.consts or 4 not in n.consts:
        raise n.fail("the running mean and variance must be constants")
    rank = len(n.in_shape(0))
    column = (1, -1, *([1] * (rank - 2)))
    eps = float(n.attr("epsilon", 1e-5))
    mean = n.consts[3].astype(np.float64).reshape(column)
    inv_std = 1.0 / np.sqrt(n.consts[4].astype(np.float64).reshape(column) + eps)
    axes = g.ints([0, *range(2, rank)])
    inv = g.const(inv_std.astype(np.float32))
    grads: Grads = [None] * len(n.inputs)
    if need[0]:
        scale = g.op("Reshape", n.inputs[1], g.ints(list(column)))
        grads[0] = g.op("Mul", gy, g.op("Mul", scale, inv))
    if need[1]:
        x_hat = g.op("Mul", g.op("Sub", n.inputs[0], g.const(mean.astype(np.float32))), inv)
        grads[1] = g.op("ReduceSum", g.op("Mul", gy, x_hat), axes, keepdims=0)
    if need[2]:
        grads[2] = g.op("ReduceSum", gy, axes, keepdims=0)
    return grads
