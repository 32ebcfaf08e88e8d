"""Conv and pooling gradients over shapes and attributes drawn by hypothesis."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._build import Net, check

TOLERANCE = 1e-3
_SETTINGS = settings(max_examples=12, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _two_ways(net: Net, h: str) -> str:
    """Flattened, beside its negation: at least two logits even from a 1x1 output."""
    flat = net.op("Flatten", h, axis=1)
    return net.op("Concat", flat, net.op("Neg", flat), axis=1)


@st.composite
def _conv_case(draw: st.DrawFn) -> bytes:
    rank = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 2]))
    channels = group * draw(st.integers(1, 2))
    kernel = draw(st.integers(1, 3))
    dilation = draw(st.integers(1, 2))
    stride = draw(st.integers(1, 3))
    pads = [draw(st.integers(0, kernel - 1)) for _ in range(2 * rank)]
    size = draw(st.integers((kernel - 1) * dilation + 1, 7))
    net = Net((channels,) + (size,) * rank, seed=draw(st.integers(0, 9)))
    x = net.op("Mul", "input", net.param((channels,) + (1,) * rank, offset=1.0))
    out_channels = group * draw(st.integers(1, 2))
    w = net.param((out_channels, channels // group) + (kernel,) * rank)
    auto = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    attrs: dict[str, object] = {"strides": [stride] * rank, "dilations": [dilation] * rank,
                                "group": group}
    if auto == "NOTSET":
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto
    h = net.op("Conv", x, w, net.param((out_channels,)), **attrs)
    return net.build(_two_ways(net, h))


@given(_conv_case())
@_SETTINGS
def test_conv_gradients(data: bytes) -> None:
    assert check(data, batch=3)[1] <= TOLERANCE


@st.composite
def _pool_case(draw: st.DrawFn) -> tuple[bytes, bool]:
    op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    rank = draw(st.sampled_from([1, 2]))
    kernel = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    pads = [draw(st.integers(0, kernel - 1)) for _ in range(2 * rank)]
    size = draw(st.integers(kernel, 6))
    net = Net((2,) + (size,) * rank, seed=draw(st.integers(0, 9)))
    x = net.op("Mul", "input", net.param((2,) + (1,) * rank, offset=1.0))
    attrs: dict[str, object] = {"kernel_shape": [kernel] * rank, "strides": [stride] * rank,
                                "pads": pads}
    if op == "AveragePool":
        attrs["count_include_pad"] = draw(st.sampled_from([0, 1]))
    uneven = pads[:rank] != pads[rank:]
    return net.build(_two_ways(net, net.op(op, x, **attrs))), uneven


@given(_pool_case())
@_SETTINGS
def test_pool_gradients(case: tuple[bytes, bool]) -> None:
    data, uneven_pads = case  # see gradient_error: the reference evaluator and uneven pads
    assert check(data, batch=3, float32=uneven_pads)[1] <= TOLERANCE
