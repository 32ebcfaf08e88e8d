"""Losses on the model's output, and what eval and infer report for each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.models._graph import FLOAT, INT64

from .emit import BATCH, Emitter, Shape, show
from .errors import ModelImportError
from .forward import Forward

LOSSES = ("cross_entropy", "bce", "mse")
# the ops a model may end in that the loss takes over (numerically stable from the logits)
_ENDINGS = {"cross_entropy": ("Softmax", "LogSoftmax"), "bce": ("Sigmoid",), "mse": ()}


@dataclass(frozen=True)
class Head:
    loss: str
    score: str  # the forward tensor the loss reads (logits, logit or reconstruction)
    n_classes: int
    n_features: int

    @property
    def supervised(self) -> bool:
        return self.loss != "mse"


def make_head(fw: Forward, loss: str, labels: int | None) -> Head:
    """Strip a final Softmax/LogSoftmax/Sigmoid the loss absorbs and check output shapes."""
    if loss not in LOSSES:
        raise ModelImportError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    n_features = int(np.prod(fw.input_shape))
    score = fw.output
    last = fw.nodes[-1] if fw.nodes else None
    if last is not None and last.output[0] == score and last.op_type in _ENDINGS[loss]:
        last_shape = fw.shapes.get(score) or ()
        axis = next((a.i for a in last.attribute if a.name == "axis"), -1)
        rank = len(last_shape)
        if last.op_type == "Sigmoid" or axis % max(rank, 1) == rank - 1:
            fw.nodes.pop()
            score = str(last.input[0])
    shape = fw.shapes.get(score)
    if shape is None:
        raise ModelImportError(f"the shape of the model output {score!r} is unknown")
    return Head(loss, score, _classes(loss, shape, labels, fw), n_features)


def _classes(loss: str, shape: Shape, labels: int | None, fw: Forward) -> int:
    if loss == "mse":
        if labels is not None:
            raise ModelImportError("--labels: an mse (reconstruction) model has no labels")
        if tuple(shape[1:]) not in (fw.input_shape, (int(np.prod(fw.input_shape)),)):
            raise ModelImportError(f"mse: the output {show(shape)} must have the input's shape"
                                   f" {show([BATCH, *fw.input_shape])}")
        return 0
    if loss == "bce":
        if tuple(shape) not in ((BATCH,), (BATCH, 1)):
            raise ModelImportError(f"bce: the output must be [N] or [N, 1], got {show(shape)}")
        if labels not in (None, 2):
            raise ModelImportError(f"--labels {labels}: a bce model has 2 classes")
        return 2
    if len(shape) != 2 or shape[0] != BATCH:
        raise ModelImportError(f"cross_entropy: the output must be [N, classes], got "
                               f"{show(shape)}")
    width = shape[1]
    if isinstance(width, int) and labels is not None and labels != width:
        raise ModelImportError(f"--labels {labels}: the model outputs {width} classes")
    classes = width if isinstance(width, int) else labels
    if classes is None or classes < 2:
        raise ModelImportError("cross_entropy: the model needs at least 2 classes (--labels)")
    return classes


class HeadWriter:
    """Writes a head's loss, its gradient, the metric and the inference outputs."""

    def __init__(self, g: Emitter, head: Head, z: str, x: str, y: str | None) -> None:
        self.g, self.head, self.z, self.x, self.y = g, head, z, x, y

    def batch(self) -> str:
        g = self.g
        return g.op("Cast", g.op("Squeeze", g.op("Shape", self.x, end=1)), to=FLOAT)

    def _targets(self) -> str:
        g, assert_y = self.g, self.y
        assert assert_y is not None
        return g.op("Reshape", g.op("Cast", assert_y, to=FLOAT), g.shape_of(self.z))

    def loss(self) -> str:
        """Writes the graph output ``loss``; returns the gradient of it at ``z``."""
        g, head, z = self.g, self.head, self.z
        batch = self.batch()
        if head.loss == "cross_entropy":
            assert self.y is not None
            log_prob = g.op("LogSoftmax", z, axis=1)
            onehot = g.op("OneHot", self.y, g.const(head.n_classes, np.int64),
                          g.const([0.0, 1.0]), axis=-1)
            picked = g.op("ReduceSum", g.op("Mul", onehot, log_prob), keepdims=0)
            g.op("Div", g.op("Neg", picked), batch, out="loss")
            return g.op("Div", g.op("Sub", g.op("Exp", log_prob), onehot), batch)
        if head.loss == "bce":
            target = self._targets()
            # softplus(z) - y z is the binary cross-entropy from the logit, stable for large |z|
            terms = g.op("Sub", g.op("Softplus", z), g.op("Mul", target, z))
            g.op("ReduceMean", terms, keepdims=0, out="loss")
            return g.op("Div", g.op("Sub", g.op("Sigmoid", z), target), batch)
        diff = self._residual()
        g.op("ReduceMean", g.op("Mul", diff, diff), keepdims=0, out="loss")
        scale = g.op("Div", g.const(2.0 / head.n_features), batch)
        return g.like(g.op("Mul", diff, scale), z)

    def _residual(self) -> str:
        g = self.g
        rows = g.op("Reshape", self.z, g.ints([-1, self.head.n_features]))
        return g.op("Sub", rows, self.x)

    def metric(self) -> None:
        g, head = self.g, self.head
        if head.loss == "mse":
            g.op("Identity", "loss", out="metric")
            return
        assert self.y is not None
        if head.loss == "bce":
            flat = g.op("Reshape", self.z, g.ints([-1]))
            predicted = g.op("Cast", g.op("Greater", flat, g.const(0.0)), to=INT64)
        else:
            predicted = g.op("ArgMax", self.z, axis=1, keepdims=0)
        correct = g.op("Cast", g.op("Equal", predicted, self.y), to=FLOAT)
        g.op("ReduceMean", correct, keepdims=0, out="metric")

    def infer(self) -> None:
        g, head = self.g, self.head
        if head.loss == "mse":
            diff = self._residual()
            g.op("Add", diff, self.x, out="reconstruction")
            g.op("ReduceMean", g.op("Mul", diff, diff), axes=[1], keepdims=0, out="score")
            g.output("reconstruction", FLOAT, ["batch", head.n_features])
            g.output("score", FLOAT, ["batch"])
        elif head.loss == "bce":
            p = g.op("Reshape", g.op("Sigmoid", self.z), g.ints([-1, 1]))
            g.op("Concat", g.op("Sub", g.const(1.0), p), p, axis=1, out="probs")
            g.output("probs", FLOAT, ["batch", 2])
        else:
            g.op("Softmax", self.z, axis=1, out="probs")
            g.output("probs", FLOAT, ["batch", head.n_classes])

