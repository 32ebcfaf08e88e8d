"""What compile_model makes of whole models: heads, folding, input reshapes, the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edge_agent.trainer import OrtModel
from orchestrator.config import ModelConfig
from orchestrator.models.architecture import initial_model
from orchestrator.models.importer import ModelImportError, compile_model, write_model_dir

from ._build import Net, check


def _run_original(data: bytes, X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data)
    shape = session.get_inputs()[0].shape
    rows = X.reshape((len(X), *shape[1:]))
    return np.asarray(session.run(None, {"input": rows})[0])


def _mlp(ending: str | None = "Softmax", classes: int = 3, seed: int = 0) -> bytes:
    net = Net((4,), seed=seed)
    h = net.op("Relu", net.op("Gemm", "input", net.param((5, 4), name="fc1.weight"),
                              net.param((5,), name="fc1.bias"), transB=1))
    out = net.op("Gemm", h, net.param((classes, 5), name="fc2.weight"),
                 net.param((classes,), name="fc2.bias"), transB=1)
    if ending is not None:
        out = net.op(ending, out, axis=1) if ending != "Sigmoid" else net.op(ending, out)
    return net.build(out)


def _step(imported: object, X: np.ndarray, y: np.ndarray | None, lr: float, mu: float,
          anchor: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    graphs, params = imported.graphs, imported.params  # type: ignore[attr-defined]
    feeds = {**params, "X": X, "lr": np.array(lr, np.float32), "mu": np.array(mu, np.float32),
             **{f"{n}_global": a for n, a in anchor.items()}}
    if y is not None:
        feeds["y"] = y
    session = ort.InferenceSession(graphs["train_step"])
    new = session.run([f"{n}_new" for n in params], feeds)
    return dict(zip(params, new, strict=True))


@pytest.mark.parametrize("ending", ["Softmax", "LogSoftmax", None])
def test_a_final_softmax_is_taken_into_the_loss(ending: str | None) -> None:
    data = _mlp(ending)
    imported, error = check(data)
    assert error <= 1e-3 and imported.n_classes == 3
    X = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    (probs,) = ort.InferenceSession(imported.graphs["infer"]).run(
        ["probs"], {**imported.params, "X": X})
    expected = _run_original(data, X)
    if ending == "LogSoftmax":
        expected = np.exp(expected)
    elif ending is None:
        expected = np.exp(expected) / np.exp(expected).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    # stable from the logits: a huge logit gives a finite loss
    big = {n: v * 1e4 for n, v in imported.params.items()}
    (loss,) = ort.InferenceSession(imported.graphs["eval"]).run(
        ["loss"], {**big, "X": X, "y": np.zeros(6, np.int64)})
    assert np.isfinite(loss)


@pytest.mark.parametrize("ending", ["Sigmoid", None])
def test_bce_on_a_logit_or_a_sigmoid(ending: str | None) -> None:
    imported, error = check(_mlp(ending, classes=1), loss="bce")
    assert error <= 1e-3 and imported.n_classes == 2
    X = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    (probs,) = ort.InferenceSession(imported.graphs["infer"]).run(
        ["probs"], {**imported.params, "X": X})
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_mse_reconstructs_the_input_and_scores_samples() -> None:
    net = Net((2, 3))
    flat = net.op("Flatten", "input", axis=1)
    h = net.op("Tanh", net.op("Gemm", flat, net.param((6, 3)), net.param((3,))))
    out = net.op("Reshape", net.op("Gemm", h, net.param((3, 6)), net.param((6,))),
                 net.const([-1, 2, 3]))
    imported, error = check(net.build(out), loss="mse")
    assert error <= 1e-3 and imported.n_features == 6
    X = np.random.default_rng(4).normal(size=(4, 6)).astype(np.float32)
    reconstruction, score = ort.InferenceSession(imported.graphs["infer"]).run(
        ["reconstruction", "score"], {**imported.params, "X": X})
    np.testing.assert_allclose(score, ((reconstruction - X) ** 2).mean(axis=1), rtol=1e-5)


def test_fedprox_pulls_towards_the_global_parameters() -> None:
    imported = compile_model(_mlp(), loss="cross_entropy")
    rng = np.random.default_rng(5)
    X = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    anchor = {n: (v + rng.normal(size=v.shape)).astype(np.float32)
              for n, v in imported.params.items()}
    plain = _step(imported, X, y, 0.1, 0.0, anchor)
    prox = _step(imported, X, y, 0.1, 0.5, anchor)
    for name, p in imported.params.items():
        np.testing.assert_allclose(prox[name], plain[name] - 0.1 * 0.5 * (p - anchor[name]),
                                   rtol=1e-5, atol=1e-6)


def test_frozen_parameters_become_constants() -> None:
    imported, error = check(_mlp(), freeze=["fc1.weight", "fc1.bias"])
    assert list(imported.params) == ["fc2.weight", "fc2.bias"] and error <= 1e-3
    with pytest.raises(ModelImportError, match="no float initializer named 'nope'"):
        compile_model(_mlp(), loss="cross_entropy", freeze=["nope"])


def test_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelImportError, match="not a readable ONNX model"):
        compile_model(b"\x00garbage", loss="mse")
    net = Net((4,))
    odd = net.op("Sin", net.op("Gemm", "input", net.param((4, 3)), net.param((3,))))
    with pytest.raises(ModelImportError, match=r"unsupported op Sin \(node 'sin_1'\)"):
        compile_model(net.build(odd), loss="cross_entropy")
    with pytest.raises(ModelImportError, match="--labels 4: the model outputs 3 classes"):
        compile_model(_mlp(), loss="cross_entropy", labels=4)
    with pytest.raises(ModelImportError, match="unknown loss"):
        compile_model(_mlp(), loss="hinge")
    with pytest.raises(ModelImportError, match="mse: the output"):
        compile_model(_mlp(), loss="mse")


def test_a_torch_style_flatten_chain_folds_into_one_reshape() -> None:
    net = Net((2, 3))
    x = net.op("Mul", "input", net.param((2, 1), offset=1.0))
    shape = net.op("Shape", x)
    batch = net.op("Unsqueeze", net.op("Gather", shape, net.const(0), axis=0), net.const([0]))
    target = net.op("Concat", batch, net.const([-1]), axis=0)
    flat = net.op("Reshape", x, target)
    data = net.build(net.op("Gemm", flat, net.param((6, 3)), net.param((3,))))
    imported, error = check(data)
    assert error <= 1e-3
    ops = {n.op_type for n in onnx.ModelProto.FromString(imported.graphs["infer"]).graph.node}
    assert not ops & {"Gather", "Concat", "Unsqueeze"}
    session = ort.InferenceSession(imported.graphs["infer"])
    for batch_size in (1, 7):
        X = np.ones((batch_size, 6), np.float32)
        (probs,) = session.run(["probs"], {**imported.params, "X": X})
        assert probs.shape == (batch_size, 3)


def _conv_net(spatial: tuple[int, ...]) -> bytes:
    rank = len(spatial)
    net = Net((3, *spatial))
    h = net.op("Relu", net.op("Conv", "input", net.param((4, 3) + (3,) * rank),
                              net.param((4,)), pads=[1] * 2 * rank))
    h = net.op("MaxPool", h, kernel_shape=[2] * rank, strides=[2] * rank)
    flat = net.op("Flatten", h, axis=1)
    width = 4 * int(np.prod([s // 2 for s in spatial]))
    return net.build(net.op("Gemm", flat, net.param((width, 2)), net.param((2,))))


@pytest.mark.parametrize("spatial", [(8,), (4, 6)], ids=["conv1d", "conv2d"])
def test_conv_models_take_2d_rows(spatial: tuple[int, ...]) -> None:
    data = _conv_net(spatial)
    imported, error = check(data)
    assert error <= 1e-3
    assert imported.input_shape == (3, *spatial) and imported.n_features == 3 * np.prod(spatial)
    X = np.random.default_rng(6).normal(size=(5, imported.n_features)).astype(np.float32)
    (probs,) = ort.InferenceSession(imported.graphs["infer"]).run(
        ["probs"], {**imported.params, "X": X})
    logits = _run_original(data, X)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_a_tf2onnx_dense_pattern() -> None:
    # tf2onnx: NHWC input transposed to NCHW, dense layers as MatMul + Add
    net = Net((2, 2, 3))
    h = net.op("Transpose", "input", perm=[0, 3, 1, 2])
    flat = net.op("Reshape", h, net.const([-1, 12]))
    dense = net.op("Add", net.op("MatMul", flat, net.param((12, 5))), net.param((5,)))
    out = net.op("Softmax", net.op("Add", net.op("MatMul", net.op("Relu", dense),
                                                 net.param((5, 3))), net.param((3,))), axis=-1)
    imported, error = check(net.build(out))
    assert error <= 1e-3 and imported.n_classes == 3


def test_an_skl2onnx_classifier_trains_on_its_probabilities() -> None:
    net = Net((4,))
    h = net.op("Relu", net.op("Add", net.op("MatMul", "input", net.param((4, 5))),
                              net.param((5,))))
    probs = net.op("Softmax", net.op("Add", net.op("MatMul", h, net.param((5, 3))),
                                     net.param((3,))), axis=1)
    label = net.op("ArgMax", probs, axis=1, keepdims=0)
    zipped = "output_probability"
    net.nodes.append(helper.make_node("ZipMap", [probs], [zipped], domain="ai.onnx.ml",
                                      classlabels_int64s=[0, 1, 2]))
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])
    map_type = helper.make_map_type_proto(TensorProto.INT64,
                                          helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    outputs = [helper.make_tensor_value_info(label, TensorProto.INT64, [None]),
               helper.make_value_info(zipped, helper.make_sequence_type_proto(map_type))]
    graph = helper.make_graph(net.nodes, "skl", [x], outputs, net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    imported, error = check(model.SerializeToString())
    assert error <= 1e-3 and imported.n_classes == 3


def test_the_directory_loads_as_graphs_dir_and_trains(tmp_path: Path) -> None:
    imported = compile_model(_conv_net((4, 4)), loss="cross_entropy")
    directory = tmp_path / "model"
    write_model_dir(imported, directory)
    assert sorted(p.name for p in directory.iterdir()) == [
        "eval.onnx", "infer.onnx", "params.npz", "train_step.onnx"]
    arch, params = initial_model(ModelConfig(spec=None, graphs_dir=directory))
    model = OrtModel(arch.graphs)
    assert model.n_classes == 2 and model.n_features == 48
    rng = np.random.default_rng(7)
    X = rng.normal(size=(64, 48)).astype(np.float32)
    y = (X[:, :24].sum(axis=1) > 0).astype(np.int64)
    before = model.evaluate(params, X, y)["loss"]
    trained = model.train(params, X, y, epochs=5, batch_size=16, lr=0.05, rng=rng)
    assert model.evaluate(trained.params, X, y)["loss"] < before
    with pytest.raises(ModelImportError, match="not an empty directory"):
        write_model_dir(imported, directory)


@pytest.mark.parametrize("opset", [13, 15, 18])
def test_exporter_opsets(opset: int) -> None:
    net = Net((2, 6), opset=opset)
    h = net.op("Conv", "input", net.param((3, 2, 3)), net.param((3,)), auto_pad="SAME_UPPER")
    h = net.op("Unsqueeze", net.op("GlobalAveragePool", h), net.const([1]))
    h = net.op("Squeeze", h, net.const([1, 3]))  # [N, 1, 3, 1] -> [N, 3]
    imported, error = check(net.build(net.op("Softmax", h, axis=-1)))
    assert error <= 1e-3 and imported.n_classes == 3


def test_parameter_names_that_clash_with_the_contract_are_renamed() -> None:
    net = Net((4,))
    out = net.op("Gemm", "input", net.param((4, 3), name="X"), net.param((3,), name="b_global"))
    imported, error = check(net.build(out))
    assert list(imported.params) == ["param0", "param1"] and error <= 1e-3
