"""``compile_model``: an ONNX inference graph in, fedmq's train_step / eval / infer out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from orchestrator.models._graph import FLOAT, INT64
from orchestrator.models.builder import META_GRAPH, META_KIND, META_PARAMS, META_SPEC

from .backward import differentiate, needs_gradient, view_of
from .canon import prepare
from .emit import Emitter
from .errors import ModelImportError
from .forward import Forward, load
from .heads import Head, HeadWriter, make_head

KIND = "imported"
_RESERVED = frozenset({"X", "y", "lr", "mu", "loss", "metric", "probs", "reconstruction",
                       "score"})


@dataclass(frozen=True)
class ImportedModel:
    """The three graphs and the initial parameters (float32, in graph input order)."""

    graphs: dict[str, bytes] = field(repr=False)
    params: dict[str, np.ndarray] = field(repr=False)
    input_shape: tuple[int, ...]
    n_features: int
    n_classes: int
    loss: str


def compile_model(model: bytes, *, loss: str, labels: int | None = None,
                  freeze: Sequence[str] = ()) -> ImportedModel:
    """Compile an exported inference model; raises :class:`ModelImportError` on anything it
    cannot handle (the message names the op, node or option)."""
    proto = load(model)
    fw = prepare(proto, freeze)
    head = make_head(fw, loss, labels)
    names = _param_names(list(fw.params))
    graphs = {role: _Graph(fw, head, names, role).build() for role in ("train_step", "eval",
                                                                      "infer")}
    for role, data in graphs.items():
        _check(role, data)
    params = {names[n]: np.ascontiguousarray(v, dtype=np.float32) for n, v in fw.params.items()}
    if not params:
        raise ModelImportError("the model has no trainable parameters (all frozen?)")
    return ImportedModel(graphs, params, fw.input_shape, head.n_features, head.n_classes, loss)


def _param_names(original: list[str]) -> dict[str, str]:
    """Graph input names for the parameters: the model's own unless they clash with the
    contract's names (or hold a comma, the metadata's separator)."""
    names: dict[str, str] = {}
    for i, name in enumerate(original):
        clash = (name in _RESERVED or name.endswith(("_global", "_new")) or "," in name
                 or not name)
        names[name] = f"param{i}" if clash else name
    return names


class _Graph:
    """One of the three graphs of an imported model under construction."""

    def __init__(self, fw: Forward, head: Head, names: dict[str, str], role: str) -> None:
        self.fw, self.head, self.names, self.role = fw, head, names, role
        self.g = Emitter(f"fedmq_import_{role}")
        for original, name in names.items():
            self.g.input(name, FLOAT, list(fw.params[original].shape))
        self.x = self.g.input("X", FLOAT, ["batch", head.n_features])
        supervised = head.supervised and role != "infer"
        self.y = self.g.input("y", INT64, ["batch"]) if supervised else None

    def rename(self, name: str) -> str:
        return self.names.get(name) or f"f/{name}"

    def forward(self) -> str:
        g, fw = self.g, self.fw
        x_in = self.rename(fw.input_name)
        if len(fw.input_shape) == 1:
            g.op("Identity", self.x, out=x_in)
        else:  # devices keep 2-D sample rows; the model sees its own input shape
            g.op("Reshape", self.x, g.ints([-1, *fw.input_shape]), out=x_in)
        for name, value in fw.consts.items():
            g.initializer(self.rename(name), value)
        for node in fw.nodes:
            copy = onnx.helper.make_node(
                node.op_type, [self.rename(i) if i else "" for i in node.input],
                [self.rename(o) if o else "" for o in node.output],
                name=f"fwd/{node.name or node.output[0]}", domain=node.domain)
            copy.attribute.extend(node.attribute)
            g.copy(copy)
        return self.rename(self.head.score)

    def build(self) -> bytes:
        z = self.forward()
        heads = HeadWriter(self.g, self.head, z, self.x, self.y)
        if self.role == "train_step":
            self._train(heads.loss(), z)
        elif self.role == "eval":
            heads.loss()
            heads.metric()
            self.g.output("loss", FLOAT, [])
            self.g.output("metric", FLOAT, [])
        else:
            heads.infer()
        return self.g.serialize(self._metadata())

    def _train(self, dz: str, z: str) -> None:
        g, fw = self.g, self.fw
        lr, mu = g.input("lr", FLOAT, []), g.input("mu", FLOAT, [])
        for original, name in self.names.items():
            g.input(f"{name}_global", FLOAT, list(fw.params[original].shape))
        active = {self.rename(t) for t in needs_gradient(fw.nodes, set(fw.params))}
        views = [view_of(n, self.rename, fw.shapes, fw.consts) for n in fw.nodes]
        wanted = list(self.names.values())
        grads = differentiate(g, views, (z, dz), wanted, active)
        for name in wanted:
            pull = g.op("Mul", mu, g.op("Sub", name, f"{name}_global"))
            grad = grads[name]
            step = pull if grad is None else g.op("Add", grad, pull)
            g.op("Sub", name, g.op("Mul", lr, step), out=f"{name}_new")
        for original, name in self.names.items():
            g.output(f"{name}_new", FLOAT, list(fw.params[original].shape))
        g.output("loss", FLOAT, [])

    def _metadata(self) -> dict[str, str]:
        spec = {"kind": KIND, "loss": self.head.loss, "n_classes": self.head.n_classes,
                "n_features": self.head.n_features, "input_shape": list(self.fw.input_shape)}
        return {META_KIND: KIND, META_PARAMS: ",".join(self.names.values()),
                META_GRAPH: self.role, META_SPEC: json.dumps(spec, sort_keys=True)}


def _check(role: str, data: bytes) -> None:
    try:
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's binding raises several types
        raise ModelImportError(f"the compiled {role} graph does not load in onnxruntime: "
                               f"{' '.join(str(exc).split())}") from None
