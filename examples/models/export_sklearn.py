"""Export a scikit-learn MLPClassifier on the 8x8 digits to ONNX with skl2onnx.

Run from the repository root in an environment with scikit-learn, skl2onnx and onnxruntime
(not dependencies of fedmq)::

    /path/to/venv/bin/python examples/models/export_sklearn.py

The classifier (one hidden layer of 32 ReLU units, 10 classes) is trained briefly (a few
Adam epochs with a fixed random_state) on the first 1500 digits scaled to [0, 1] and converted
with ``target_opset=17`` and ``options={"zipmap": False}`` to ``mlp_digits_skl.onnx``.

What skl2onnx emits (1.20.0; checked against the file):

* Input ``input`` float32 [N, 64]; the batch dimension is left unnamed (neither dim_param
  nor dim_value). Outputs ``label`` (int64 [N]) and ``probabilities`` (float32 [N, 10]).
* Opset imports: default domain 16 and ``ai.onnx.ml`` 1 -- skl2onnx treats target_opset 17
  as an upper bound and stamps the lowest opset its operators need.
* Ops: Cast(to float) -> MatMul(coefficient) -> Add(intercepts) -> Relu ->
  MatMul(coefficient1) -> Add(intercepts1) -> Softmax -> Identity -> ``probabilities``;
  then ArgMax(axis 1) -> ArrayFeatureExtractor(classes) -> Reshape(shape_tensor) ->
  Cast(to int64) -> ``label``. The graph ends in Softmax, so the logits are the Softmax input
  ``add_result1``; a training graph takes its loss from there, not from the probabilities.
* Initializers: ``coefficient`` [64, 32], ``intercepts`` [1, 32], ``coefficient1`` [32, 10],
  ``intercepts1`` [1, 10] (the trainable ones; biases are 2-D), ``classes`` int64 [10] and
  ``shape_tensor`` int64 [1] (not trainable).

``mlp_digits_skl_reference.npz`` is the one-epoch reference computed here in numpy on the
same graph (forward ``X @ W0 + b0``, ReLU, ``@ W1 + b1``, softmax cross-entropy, mean over the
batch), starting from the initializer values read back from the ONNX file: ``X`` (the last
32 digits, float32), ``y`` (int64), ``lr`` (0.05), ``batch_size`` (8), ``init/<name>`` and
``after/<name>`` for the four trainable initializers (ONNX names), ``loss_first_batch``,
``losses`` (each batch's loss before its update), ``logits_init`` (the pre-softmax scores of
the initial model on X) and ``trainable``. The epoch is plain SGD in float32, batches of 8 in
order, no shuffling.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _reference import forward, save_reference, sgd_step, softmax
from onnx import numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

HERE = Path(__file__).resolve().parent
NAME = "mlp_digits_skl"
OPSET = 17
LR = np.float32(0.05)
BATCH_SIZE = 8
N_SAMPLES = 32


def train() -> MLPClassifier:
    digits = load_digits()
    x = (digits.data[:1500] / 16.0).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(32,), activation="relu", max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # brief on purpose
        clf.fit(x, digits.target[:1500])
    return clf


def trainable_names(proto: onnx.ModelProto) -> list[str]:
    """W0, b0, W1, b1: the second inputs of the MatMul and Add nodes, in graph order."""
    inits = {t.name for t in proto.graph.initializer}
    names = [
        node.input[1]
        for node in proto.graph.node
        if node.op_type in ("MatMul", "Add") and node.input[1] in inits
    ]
    if len(names) != 4:
        raise SystemExit(f"expected 2 MatMul + 2 Add with initializers, found {names}")
    return names


def main() -> None:
    clf = train()
    path = HERE / f"{NAME}.onnx"
    proto = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        target_opset={"": OPSET, "ai.onnx.ml": 3},
        options={id(clf): {"zipmap": False}},
    )
    proto.graph.name = NAME  # skl2onnx names the graph with a random uuid; fixed for re-runs
    onnx.checker.check_model(proto, full_check=True)
    path.write_bytes(proto.SerializeToString())

    digits = load_digits()
    x = (digits.data[-N_SAMPLES:] / 16.0).astype(np.float32)
    y = digits.target[-N_SAMPLES:].astype(np.int64)

    names = trainable_names(proto)
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    params = [init[n].astype(np.float32).copy() for n in names]
    expected = [clf.coefs_[0], clf.intercepts_[0], clf.coefs_[1], clf.intercepts_[1]]
    for name, value, ref in zip(names, params, expected, strict=True):
        if not np.allclose(value.reshape(ref.shape), ref, atol=1e-6):
            raise SystemExit(f"{name} is not the sklearn weight it should be")

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, proba = session.run(None, {"input": x})
    _, logits = forward(params, x)
    if not np.allclose(proba, softmax(logits), atol=1e-5):
        raise SystemExit("numpy forward disagrees with onnxruntime")
    if not np.array_equal(label, clf.predict(x)):
        raise SystemExit("onnxruntime labels disagree with sklearn")

    init_params = [p.copy() for p in params]
    losses = [
        sgd_step(params, x[s : s + BATCH_SIZE], y[s : s + BATCH_SIZE], LR)
        for s in range(0, N_SAMPLES, BATCH_SIZE)
    ]
    save_reference(HERE / f"{NAME}_reference.npz", x=x, y=y, lr=LR, batch_size=BATCH_SIZE,
                   losses=losses, logits=logits, trainable=names,
                   init=dict(zip(names, init_params, strict=True)),
                   after=dict(zip(names, params, strict=True)))

    print(f"{NAME}: outputs {[o.name for o in proto.graph.output]}")
    print(f"  initializers: {', '.join(f'{k}{list(v.shape)}' for k, v in init.items())}")
    print(f"  trainable: {', '.join(names)}")
    print(f"  ops: {' '.join(n.op_type for n in proto.graph.node)}")
    print(f"  losses: {', '.join(f'{v:.5f}' for v in losses)}")


if __name__ == "__main__":
    main()
