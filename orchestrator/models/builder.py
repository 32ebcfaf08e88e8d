"""Build the ``train_step`` / ``eval`` / ``infer`` ONNX graphs of a ``ModelSpec``.

Parameters are graph *inputs*, so one graph serves every model version. Gradients are
written out as plain ONNX ops (Gemm, ReduceSum, Relu/Tanh backprop, softmax cross-entropy),
so the device needs nothing but ``onnxruntime``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import numpy as np

from orchestrator.models._graph import FLOAT, INT64, GraphBuilder
from orchestrator.models.spec import ModelSpec

GRAPH_NAMES = ("train_step", "eval", "infer")
META_KIND = "fedmq.kind"
META_PARAMS = "fedmq.params"
META_GRAPH = "fedmq.graph"
META_SPEC = "fedmq.spec"


@dataclass(frozen=True)
class BuiltModel:
    """The graphs of one model and its initial parameters (float32, in graph input order)."""

    spec: ModelSpec
    graphs: dict[str, bytes]
    params: dict[str, np.ndarray] = field(repr=False)

    @property
    def param_count(self) -> int:
        return sum(int(p.size) for p in self.params.values())


def build_model(spec: ModelSpec) -> BuiltModel:
    graphs = {
        "train_step": _Net(spec, "train_step").train_step(),
        "eval": _Net(spec, "eval").evaluate(),
        "infer": _Net(spec, "infer").infer(),
    }
    return BuiltModel(spec=spec, graphs=graphs, params=init_params(spec))


def param_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes in graph input order: ``W0, b0, W1, b1, ...``."""
    sizes = spec.layer_sizes()
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        shapes[f"W{i}"] = (fan_in, fan_out)
        shapes[f"b{i}"] = (fan_out,)
    return shapes


def init_params(spec: ModelSpec) -> dict[str, np.ndarray]:
    """He-uniform weights before ReLU, Glorot-uniform elsewhere; zero biases; seeded."""
    rng = np.random.default_rng(spec.seed)
    n_layers = len(spec.layer_sizes()) - 1
    params: dict[str, np.ndarray] = {}
    for name, shape in param_shapes(spec).items():
        if name.startswith("b"):
            params[name] = np.zeros(shape, dtype=np.float32)
            continue
        fan_in, fan_out = shape
        feeds_relu = spec.activation == "relu" and int(name[1:]) < n_layers - 1
        limit = np.sqrt(6.0 / fan_in) if feeds_relu else np.sqrt(6.0 / (fan_in + fan_out))
        params[name] = rng.uniform(-limit, limit, size=shape).astype(np.float32)
    return params


class _Net:
    """One graph under construction: declares the parameter and data inputs, then the ops."""

    def __init__(self, spec: ModelSpec, graph: str) -> None:
        self.spec = spec
        self.graph = graph
        self.g = GraphBuilder(f"fedmq_{spec.kind}_{graph}")
        self.shapes = param_shapes(spec)
        self.layers = [(f"W{i}", f"b{i}") for i in range(len(self.shapes) // 2)]
        for name, shape in self.shapes.items():
            self.g.input(name, FLOAT, shape)
        self.x = self.g.input("X", FLOAT, ["batch", spec.n_features])
        self.y = self._label_input() if graph != "infer" else None

    def _label_input(self) -> str | None:
        return self.g.input("y", INT64, ["batch"]) if self.spec.supervised else None

    # -- building blocks -------------------------------------------------------------------

    def _forward(self, out: str | None = None) -> tuple[list[str], str]:
        """Returns the input of every layer (``X`` first) and the output layer's values."""
        g = self.g
        inputs = [self.x]
        h = self.x
        for i, (w, b) in enumerate(self.layers):
            if i == len(self.layers) - 1:
                return inputs, g.op("Gemm", h, w, b, out=out)
            z = g.op("Gemm", h, w, b)
            h = g.op("Relu" if self.spec.activation == "relu" else "Tanh", z)
            inputs.append(h)
        raise AssertionError("a model has at least one layer")

    def _backward(self, inputs: list[str], d_out: str, pulled: dict[str, str]) -> None:
        """Write ``{p}_new = pulled[p] - grad(p)`` for every parameter, given the gradient at
        the output layer's values (already scaled by lr / batch)."""
        g = self.g
        axis0 = g.const([0], np.int64)
        d = d_out
        for i in reversed(range(len(self.layers))):
            w, b = self.layers[i]
            # Gemm computes pulled - inputsᵀ·d in one kernel (alpha=-1, beta=1)
            g.op("Gemm", inputs[i], d, pulled[w], transA=1, alpha=-1.0, beta=1.0, out=f"{w}_new")
            g.op("Sub", pulled[b], g.op("ReduceSum", d, axis0, keepdims=0), out=f"{b}_new")
            if i == 0:
                break
            d_h = g.op("Gemm", d, w, transB=1)
            h = inputs[i]  # this layer's input is the previous layer's activation
            if self.spec.activation == "relu":
                d = g.op("Where", g.op("Greater", h, g.const(0.0)), d_h, g.const(0.0))
            else:
                d = g.op("Mul", d_h, g.op("Sub", g.const(1.0), g.op("Mul", h, h)))

    def _batch_size(self) -> str:
        """The batch size as a float scalar."""
        g = self.g
        return g.op("Cast", g.op("Squeeze", g.op("Shape", self.x, end=1)), to=FLOAT)

    def _cross_entropy(self, logits: str, batch: str) -> tuple[str, str]:
        """Mean softmax cross-entropy (graph output ``loss``) and the one-hot labels.

        Written with LogSoftmax and OneHot rather than SoftmaxCrossEntropyLoss: onnxruntime
        expands that op into a dozen small nodes, which costs more than the maths here.
        """
        g = self.g
        assert self.y is not None
        log_prob = g.op("LogSoftmax", logits, axis=1)
        onehot = g.op(
            "OneHot", self.y, g.const(self.spec.n_classes, np.int64), g.const([0.0, 1.0]),
            axis=-1,
        )
        picked = g.op("ReduceSum", g.op("Mul", onehot, log_prob), keepdims=0)
        g.op("Div", g.op("Neg", picked), batch, out="loss")
        return log_prob, onehot

    def _labels_as_column(self) -> str:
        assert self.y is not None
        return self.g.op("Unsqueeze", self.y, self.g.const([1], np.int64))

    def _serialize(self) -> bytes:
        return self.g.serialize(
            {
                META_KIND: self.spec.kind,
                META_PARAMS: ",".join(self.shapes),
                META_GRAPH: self.graph,
                META_SPEC: json.dumps(self.spec.to_dict(), sort_keys=True),
            }
        )

    # -- the three graphs ------------------------------------------------------------------

    def train_step(self) -> bytes:
        g, kind = self.g, self.spec.kind
        lr = g.input("lr", FLOAT, [])
        mu = g.input("mu", FLOAT, [])
        for name, shape in self.shapes.items():
            g.input(f"{name}_global", FLOAT, shape)
        inputs, out = self._forward()
        # Scaling the output gradient by lr / batch scales every parameter gradient by it too
        # (backprop is linear in it), which saves a multiply over each parameter tensor.
        batch = self._batch_size()
        scale = g.op("Div", lr, batch)
        if kind == "autoencoder":
            diff = g.op("Sub", out, self.x)
            g.op("ReduceMean", g.op("Mul", diff, diff), keepdims=0, out="loss")
            scale = g.op("Mul", scale, g.const(2.0 / self.spec.n_features))
            d_out = g.op("Mul", diff, scale)
        elif kind == "logistic":
            y_col = g.op("Cast", self._labels_as_column(), to=FLOAT)
            self._logistic_loss(out, y_col, "loss")
            d_out = g.op("Mul", g.op("Sub", g.op("Sigmoid", out), y_col), scale)
        else:
            log_prob, onehot = self._cross_entropy(out, batch)
            d_out = g.op("Mul", g.op("Sub", g.op("Exp", log_prob), onehot), scale)
        # p_new = p - lr * (grad + mu * (p - p_global)) = pulled - lr * grad, where
        # pulled = p - lr * mu * (p - p_global) is the FedProx pull towards the global model
        prox_scale = g.op("Mul", lr, mu)
        pulled = {
            name: g.op("Sub", name, g.op("Mul", prox_scale, g.op("Sub", name, f"{name}_global")))
            for name in self.shapes
        }
        self._backward(inputs, d_out, pulled)
        for name, shape in self.shapes.items():
            g.output(f"{name}_new", FLOAT, shape)
        g.output("loss", FLOAT, [])
        return self._serialize()

    def _logistic_loss(self, z: str, y_col: str, out: str) -> str:
        # binary cross-entropy from the logit: softplus(z) - y * z, stable for large |z|
        g = self.g
        return g.op(
            "ReduceMean", g.op("Sub", g.op("Softplus", z), g.op("Mul", y_col, z)),
            keepdims=0, out=out,
        )

    def evaluate(self) -> bytes:
        g, kind = self.g, self.spec.kind
        _, out = self._forward()
        if kind == "autoencoder":
            diff = g.op("Sub", out, self.x)
            loss = g.op("ReduceMean", g.op("Mul", diff, diff), keepdims=0, out="loss")
            g.op("Identity", loss, out="metric")
        elif kind == "logistic":
            y_col = self._labels_as_column()
            self._logistic_loss(out, g.op("Cast", y_col, to=FLOAT), "loss")
            predicted = g.op("Cast", g.op("Greater", out, g.const(0.0)), to=INT64)
            correct = g.op("Cast", g.op("Equal", predicted, y_col), to=FLOAT)
            g.op("ReduceMean", correct, keepdims=0, out="metric")
        else:
            assert self.y is not None
            self._cross_entropy(out, self._batch_size())
            predicted = g.op("ArgMax", out, axis=1, keepdims=0)
            correct = g.op("Cast", g.op("Equal", predicted, self.y), to=FLOAT)
            g.op("ReduceMean", correct, keepdims=0, out="metric")
        g.output("loss", FLOAT, [])
        g.output("metric", FLOAT, [])
        return self._serialize()

    def infer(self) -> bytes:
        g, kind = self.g, self.spec.kind
        n_features = self.spec.n_features
        if kind == "autoencoder":
            _, out = self._forward(out="reconstruction")
            diff = g.op("Sub", out, self.x)
            g.op("ReduceMean", g.op("Mul", diff, diff), axes=[1], keepdims=0, out="score")
            g.output("reconstruction", FLOAT, ["batch", n_features])
            g.output("score", FLOAT, ["batch"])
        elif kind == "logistic":
            _, out = self._forward()
            p = g.op("Sigmoid", out)
            g.op("Concat", g.op("Sub", g.const(1.0), p), p, axis=1, out="probs")
            g.output("probs", FLOAT, ["batch", 2])
        else:
            _, out = self._forward()
            g.op("Softmax", out, axis=1, out="probs")
            g.output("probs", FLOAT, ["batch", self.spec.n_classes])
        return self._serialize()
