"""Export the PyTorch example models to ONNX, with one-epoch SGD references.

Run from the repository root in a separate environment that has torch (it is not a
dependency of fedmq)::

    /path/to/venv/bin/python examples/models/export_torch.py

Every model is built from a fixed seed and exported with the legacy TorchScript exporter
(``dynamo=False``), opset 17, a dynamic batch axis ``N``, ``do_constant_folding=False`` and
``training=TrainingMode.EVAL``. Constant folding is off because with it the exporter's eval
peephole pass folds BatchNorm into the preceding Conv (and renames the initializers); without
it every ``state_dict`` tensor that the graph uses is an initializer under its own name.
``num_batches_tracked`` is not used by the graph and is dropped. The script checks this: the
initializer names must equal the state_dict names it expects, and the values must match.

Models and what they exercise:

* ``conv1d_vibration.onnx`` -- [N, 3, 128] -> 4 logits. Conv, BatchNormalization
  (inference form), Relu, MaxPool, GlobalAveragePool (AdaptiveAvgPool1d(1)), Flatten, Gemm.
* ``conv2d_digits.onnx`` -- [N, 1, 8, 8] -> 10 logits. Flattens with
  ``x.view(x.size(0), -1)``, which the exporter turns into the chain
  Shape -> Gather -> Unsqueeze -> Concat -> Reshape (checked below).
* ``conv2d_grouped.onnx`` -- [N, 2, 9, 9] -> 3 logits. Conv with group=2, strides 2,
  dilations 2 and pads; LeakyRelu; AveragePool with count_include_pad=0; Tanh; Flatten; Elu.

For each model ``<model>_reference.npz`` holds a "training equivalence" reference: ``X``
(float32, 32 samples), ``y`` (int64), ``lr`` (0.05), ``batch_size`` (8), ``init/<name>`` and
``after/<name>`` for every initializer (ONNX names), ``loss_first_batch`` (mean cross-entropy
of the first batch before any update), plus ``losses`` (the loss of each of the 4 batches,
each before its update), ``logits_init`` (the initial model's logits on all of X) and
``trainable`` (the names that SGD updates; the BatchNorm running statistics are not among
them and are equal in init/ and after/). The epoch is plain SGD, batches of 8 in order,
no shuffling, no momentum or weight decay, with the model in eval mode: BatchNorm uses its
running statistics, which stay frozen, while its weight and bias are trained.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from _reference import save_reference
from onnx import numpy_helper
from sklearn.datasets import load_digits
from torch import nn

HERE = Path(__file__).resolve().parent
OPSET = 17
LR = 0.05
BATCH_SIZE = 8
N_SAMPLES = 32


class Conv1dVibration(nn.Module):
    """A small 1-D CNN for machine-fault classification from 3-axis vibration windows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm1d(16)
        self.pool1 = nn.MaxPool1d(2)
        self.conv2 = nn.Conv1d(16, 32, kernel_size=5, padding=2)
        self.gap = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(0.2)  # inactive in eval mode; exports away
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.bn1(self.conv1(x))))
        x = F.relu(self.conv2(x))
        x = self.flatten(self.gap(x))
        return self.fc(self.dropout(x))


class Conv2dDigits(nn.Module):
    """A 2-D CNN for sklearn's 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        x = x.view(x.size(0), -1)  # -> Shape, Gather, Unsqueeze, Concat, Reshape
        return self.fc2(F.relu(self.fc1(x)))


class Conv2dGrouped(nn.Module):
    """A tiny model of less common Conv/Pool attributes, for gradient checks."""

    def __init__(self) -> None:
        super().__init__()
        # [N,2,9,9] -> [N,4,5,5]
        self.conv = nn.Conv2d(2, 4, kernel_size=3, stride=2, padding=2, dilation=2, groups=2)
        # [N,4,5,5] -> [N,4,3,3]; the padded cells are left out of the averages
        self.pool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1, count_include_pad=False)
        self.fc1 = nn.Linear(4 * 3 * 3, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv(x), negative_slope=0.1)
        x = torch.tanh(self.pool(x))
        x = torch.flatten(x, 1)
        return self.fc2(F.elu(self.fc1(x)))


def build_vibration() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    model = Conv1dVibration()
    # Non-trivial running statistics, so that a compiler that ignores them (or folds them
    # wrongly) is caught by the reference; the defaults (0 and 1) would make BN an affine map.
    gen = torch.Generator().manual_seed(100)
    with torch.no_grad():
        model.bn1.running_mean.copy_(0.1 * torch.randn(16, generator=gen))
        model.bn1.running_var.copy_(0.5 + torch.rand(16, generator=gen))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N_SAMPLES, 3, 128)).astype(np.float32)
    y = rng.integers(0, 4, N_SAMPLES).astype(np.int64)
    return model, x, y


def build_digits() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    model = Conv2dDigits()
    digits = load_digits()
    x = (digits.images[:N_SAMPLES] / 16.0).astype(np.float32).reshape(N_SAMPLES, 1, 8, 8)
    y = digits.target[:N_SAMPLES].astype(np.int64)
    return model, x, y


def build_grouped() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    model = Conv2dGrouped()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N_SAMPLES, 2, 9, 9)).astype(np.float32)
    y = rng.integers(0, 3, N_SAMPLES).astype(np.int64)
    return model, x, y


def export(model: nn.Module, x: np.ndarray, path: Path) -> onnx.ModelProto:
    model.eval()
    torch.onnx.export(
        model,
        (torch.from_numpy(x[:2]),),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL,
        export_params=True,
        keep_initializers_as_inputs=False,
    )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def check_initializers(model: nn.Module, proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The initializers are the state_dict tensors, under the same names and values."""
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    expected = {k for k in state if not k.endswith("num_batches_tracked")}
    if set(inits) != expected:
        raise SystemExit(f"initializer names {sorted(inits)} != state_dict {sorted(expected)}")
    for name, value in inits.items():
        if not np.array_equal(value, state[name]):
            raise SystemExit(f"initializer {name} differs from the state_dict value")
    return inits


def has_shape_chain(proto: onnx.ModelProto) -> bool:
    """True if a Reshape's shape comes from Concat <- Unsqueeze <- Gather <- Shape."""
    producer = {out: node for node in proto.graph.node for out in node.output}

    def reaches(name: str, ops: list[str]) -> bool:
        node = producer.get(name)
        if node is None or node.op_type != ops[0]:
            return False
        return len(ops) == 1 or any(reaches(i, ops[1:]) for i in node.input)

    return any(
        node.op_type == "Reshape"
        and reaches(node.input[1], ["Concat", "Unsqueeze", "Gather", "Shape"])
        for node in proto.graph.node
    )


def one_epoch(model: nn.Module, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Plain SGD over x in order, batches of BATCH_SIZE, model in eval mode."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    for start in range(0, len(x), BATCH_SIZE):
        xb = torch.from_numpy(x[start : start + BATCH_SIZE])
        yb = torch.from_numpy(y[start : start + BATCH_SIZE])
        with torch.enable_grad():
            loss = F.cross_entropy(model(xb), yb)
            grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(LR * g)
        losses.append(float(loss.detach()))
    return losses


def make(name: str, build: Callable[[], tuple[nn.Module, np.ndarray, np.ndarray]]) -> None:
    model, x, y = build()
    path = HERE / f"{name}.onnx"
    proto = export(model, x, path)
    init = check_initializers(model, proto)
    trainable = [k for k, p in model.named_parameters() if p.requires_grad]
    if not set(trainable) <= set(init):
        raise SystemExit(f"{name}: a trained parameter is not an initializer")

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits_ort = session.run(None, {"input": x})[0]
    with torch.no_grad():
        logits_torch = model(torch.from_numpy(x)).numpy()
    if not np.allclose(logits_ort, logits_torch, rtol=1e-4, atol=1e-5):
        raise SystemExit(f"{name}: onnxruntime and torch disagree")

    losses = one_epoch(model, x, y)
    after = {k: v.detach().numpy().copy() for k, v in model.state_dict().items() if k in init}
    save_reference(HERE / f"{name}_reference.npz", x=x, y=y, lr=LR, batch_size=BATCH_SIZE,
                   losses=losses, logits=logits_torch, trainable=trainable, init=init,
                   after=after)

    ops = [n.op_type for n in proto.graph.node]
    n_params = sum(v.size for v in init.values())
    print(f"{name}: {n_params} initializer values, chain={has_shape_chain(proto)}")
    print(f"  initializers: {', '.join(init)}")
    print(f"  ops: {' '.join(ops)}")
    print(f"  losses: {', '.join(f'{v:.5f}' for v in losses)}")


def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    make("conv1d_vibration", build_vibration)
    make("conv2d_digits", build_digits)
    make("conv2d_grouped", build_grouped)


if __name__ == "__main__":
    main()
