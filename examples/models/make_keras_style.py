"""Build a small dense classifier in the ONNX form that tf2onnx gives a Keras model.

There is no TensorFlow here: this script imitates tf2onnx's output pattern with
onnx.helper; the model does NOT come from TensorFlow. Run from the repository root in an
environment with numpy, onnx and onnxruntime::

    /path/to/venv/bin/python examples/models/make_keras_style.py

The imitated pattern (as tf2onnx emits ``keras.Sequential([Dense(16, "relu"),
Dense(3, "softmax")])``): input ``input_1`` float32 [unk__N, 20] (tf2onnx's name for an unknown
batch dimension); each Dense is a MatMul by ``sequential/dense/MatMul/ReadVariableOp:0``
[in, out] followed by an Add of ``sequential/dense/BiasAdd/ReadVariableOp:0`` [out] (tf2onnx
turns BiasAdd into Add); the hidden activation is Relu, the last one Softmax; the output goes
through an ``Identity`` to the graph output ``dense_1`` [unk__N, 3]; opset 17. Weights are
Glorot-uniform from a fixed seed and biases zeros, as Keras initialises them.

Ops: MatMul -> Add -> Relu -> MatMul -> Add -> Softmax -> Identity.

``keras_style_dense_reference.npz`` is the one-epoch reference computed in numpy (forward
``X @ W0 + b0``, ReLU, ``@ W1 + b1``, softmax cross-entropy, mean over the batch): ``X``
(float32 [32, 20], seeded normal), ``y`` (int64 in 0..2), ``lr`` (0.05), ``batch_size`` (8),
``init/<name>`` and ``after/<name>`` for the four initializers, ``loss_first_batch``,
``losses`` (each batch's loss before its update), ``logits_init`` (the Softmax input of the
initial model on X) and ``trainable``. Plain SGD in float32, batches of 8 in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _reference import forward, save_reference, sgd_step, softmax
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
NAME = "keras_style_dense"
OPSET = 17
LR = np.float32(0.05)
BATCH_SIZE = 8
N_SAMPLES = 32
SIZES = (20, 16, 3)


def glorot(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32)


def build(params: dict[str, np.ndarray]) -> onnx.ModelProto:
    names = list(params)
    batch = "unk__6"
    nodes = [
        helper.make_node("MatMul", ["input_1", names[0]], ["sequential/dense/MatMul:0"],
                         name="sequential/dense/MatMul"),
        helper.make_node("Add", ["sequential/dense/MatMul:0", names[1]],
                         ["sequential/dense/BiasAdd:0"], name="sequential/dense/BiasAdd"),
        helper.make_node("Relu", ["sequential/dense/BiasAdd:0"], ["sequential/dense/Relu:0"],
                         name="sequential/dense/Relu"),
        helper.make_node("MatMul", ["sequential/dense/Relu:0", names[2]],
                         ["sequential/dense_1/MatMul:0"], name="sequential/dense_1/MatMul"),
        helper.make_node("Add", ["sequential/dense_1/MatMul:0", names[3]],
                         ["sequential/dense_1/BiasAdd:0"], name="sequential/dense_1/BiasAdd"),
        helper.make_node("Softmax", ["sequential/dense_1/BiasAdd:0"],
                         ["sequential/dense_1/Softmax:0"], name="sequential/dense_1/Softmax",
                         axis=-1),
        helper.make_node("Identity", ["sequential/dense_1/Softmax:0"], ["dense_1"],
                         name="Identity"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "sequential",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [batch, SIZES[0]])],
        [helper.make_tensor_value_info("dense_1", TensorProto.FLOAT, [batch, SIZES[2]])],
        initializer=[numpy_helper.from_array(v, k) for k, v in params.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fedmq make_keras_style.py (imitates tf2onnx)",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    rng = np.random.default_rng(0)
    init = {
        "sequential/dense/MatMul/ReadVariableOp:0": glorot(rng, SIZES[0], SIZES[1]),
        "sequential/dense/BiasAdd/ReadVariableOp:0": np.zeros(SIZES[1], np.float32),
        "sequential/dense_1/MatMul/ReadVariableOp:0": glorot(rng, SIZES[1], SIZES[2]),
        "sequential/dense_1/BiasAdd/ReadVariableOp:0": np.zeros(SIZES[2], np.float32),
    }
    model = build(init)
    path = HERE / f"{NAME}.onnx"
    path.write_bytes(model.SerializeToString())

    data_rng = np.random.default_rng(1)
    x = data_rng.standard_normal((N_SAMPLES, SIZES[0])).astype(np.float32)
    y = data_rng.integers(0, SIZES[2], N_SAMPLES).astype(np.int64)

    names = list(init)
    params = [v.copy() for v in init.values()]
    _, logits = forward(params, x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (proba,) = session.run(None, {"input_1": x})
    if not np.allclose(proba, softmax(logits), atol=1e-6):
        raise SystemExit("numpy forward disagrees with onnxruntime")

    losses = [
        sgd_step(params, x[s : s + BATCH_SIZE], y[s : s + BATCH_SIZE], LR)
        for s in range(0, N_SAMPLES, BATCH_SIZE)
    ]
    save_reference(HERE / f"{NAME}_reference.npz", x=x, y=y, lr=LR, batch_size=BATCH_SIZE,
                   losses=losses, logits=logits, trainable=names, init=init,
                   after=dict(zip(names, params, strict=True)))
    print(f"{NAME}: initializers {', '.join(names)}")
    print(f"  losses: {', '.join(f'{v:.5f}' for v in losses)}")


if __name__ == "__main__":
    main()
