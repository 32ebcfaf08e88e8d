"""Model endings the losses take over besides a final Softmax, LogSoftmax or Sigmoid."""

from __future__ import annotations

import numpy as np
from onnx import helper

from .emit import BATCH
from .forward import Forward

_ZERO = "fedmq/zero"


def two_class_sigmoid(fw: Forward) -> str | None:
    """The logit ``z`` [N, 1] when the model ends in ``Concat(1 - sigmoid(z), sigmoid(z))``
    (how skl2onnx writes a binary classifier's probabilities); the Concat and the Sub are
    removed, and so is the 1 if it was an initializer taken for a parameter."""
    producers = {o: n for n in fw.nodes for o in n.output}
    last = producers.get(fw.output)
    if last is None or last.op_type != "Concat" or len(last.input) != 2:
        return None
    first, second = producers.get(last.input[0]), producers.get(last.input[1])
    if first is None or second is None or second.op_type != "Sigmoid":
        return None
    one = fw.consts.get(first.input[0], fw.params.get(first.input[0]))
    if first.op_type != "Sub" or first.input[1] != second.output[0] or one is None:
        return None
    if not np.all(one == 1) or fw.shapes.get(second.input[0]) != (BATCH, 1):
        return None
    fw.nodes.remove(last)
    fw.nodes.remove(first)
    used = {name for node in fw.nodes for name in node.input}
    fw.params = {n: v for n, v in fw.params.items() if n in used}
    return str(second.input[0])


def two_class_logits(fw: Forward, z: str) -> str:
    """Logits [N, 2] = [0, z], whose softmax is [1 - sigmoid(z), sigmoid(z)]."""
    fw.consts[_ZERO] = np.zeros((), np.float32)
    zero, logits = f"{z}/zero", f"{z}/two_class"
    fw.nodes.append(helper.make_node("Mul", [z, _ZERO], [zero], name=zero))
    fw.nodes.append(helper.make_node("Concat", [zero, z], [logits], name=logits, axis=1))
    fw.shapes.update({_ZERO: (), zero: (BATCH, 1), logits: (BATCH, 2)})
    return logits
