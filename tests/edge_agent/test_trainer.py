"""OrtModel: training, evaluation and prediction with real onnxruntime on real graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_agent.trainer import ModelContractError, ModelRunError, OrtModel
from orchestrator.convergence.datasets import load_named, split_train_test
from orchestrator.models import BuiltModel, ModelSpec, build_model


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    train, test = split_train_test(load_named("digits"), test_fraction=0.25, seed=0)
    assert train.y is not None and test.y is not None
    return train.X, train.y, test.X, test.y


def _small_model(kind: str = "mlp") -> BuiltModel:
    if kind == "autoencoder":
        return build_model(ModelSpec("autoencoder", 5, 0, (4, 2, 4), "tanh", seed=3))
    return build_model(ModelSpec("mlp", 5, 3, (4,), "relu", seed=3))


def _toy_data(n: int = 23) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize(
    "spec",
    [ModelSpec("softmax", 64, 10), ModelSpec("mlp", 64, 10, (64,), "relu", seed=1),
     ModelSpec("mlp", 64, 10, (32,), "tanh", seed=2)],
    ids=["softmax", "mlp_relu", "mlp_tanh"],
)
def test_training_on_digits_lowers_loss_and_beats_chance(
    spec: ModelSpec, digits: tuple[np.ndarray, ...]
) -> None:
    X, y, X_test, y_test = digits
    built = build_model(spec)
    model = OrtModel(built.graphs)
    before = model.evaluate(built.params, X_test, y_test)
    result = model.train(
        built.params, X, y, epochs=3, batch_size=32, lr=0.05, rng=np.random.default_rng(0)
    )
    after = model.evaluate(result.params, X_test, y_test)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["metric"] > 0.85  # chance is 0.1
    assert result.steps == 3 * -(-len(X) // 32)
    assert result.samples == 3 * len(X)
    assert not result.stopped_early
    assert np.isfinite(result.mean_loss) and result.mean_loss < before["loss"]


def test_autoencoder_training_lowers_reconstruction_error(
    digits: tuple[np.ndarray, ...],
) -> None:
    X, _, X_test, _ = digits
    built = build_model(ModelSpec("autoencoder", 64, 0, (32, 8, 32), "tanh"))
    model = OrtModel(built.graphs)
    assert not model.supervised
    before = model.evaluate(built.params, X_test)
    result = model.train(
        built.params, X, None, epochs=5, batch_size=32, lr=0.2, rng=np.random.default_rng(0)
    )
    after = model.evaluate(result.params, X_test)
    assert after["loss"] < 0.75 * before["loss"]
    assert after["metric"] == pytest.approx(after["loss"])
    scores = model.predict(result.params, X_test)["score"]
    assert scores.shape == (len(X_test),)
    assert float(scores.mean()) == pytest.approx(after["metric"], rel=1e-4)


def test_train_matches_a_plain_session_run_loop() -> None:
    """The IOBinding ping-pong gives exactly what feeding session.run step by step gives."""
    built = _small_model()
    X, y = _toy_data()
    anchor = {n: p + 0.3 for n, p in built.params.items()}
    result = OrtModel(built.graphs).train(
        built.params, X, y, epochs=2, batch_size=5, lr=0.1, mu=0.5, global_params=anchor,
        rng=np.random.default_rng(11),
    )
    session = ort.InferenceSession(built.graphs["train_step"])
    params = dict(built.params)
    names = list(params)
    rng = np.random.default_rng(11)
    losses = []
    for _ in range(2):
        order = rng.permutation(len(X))
        for begin in range(0, len(X), 5):
            index = order[begin : begin + 5]
            feeds = {**params, "X": X[index], "y": y[index]}
            feeds |= {"lr": np.array(0.1, np.float32), "mu": np.array(0.5, np.float32)}
            feeds |= {f"{n}_global": a for n, a in anchor.items()}
            *new, loss = session.run([f"{n}_new" for n in names] + ["loss"], feeds)
            params = dict(zip(names, new, strict=True))
            losses.append((float(loss), len(index)))
    assert result.steps == 10  # 23 samples in batches of 5: 4 full + 1 partial, twice
    for name in names:
        np.testing.assert_allclose(result.params[name], params[name], rtol=1e-5, atol=1e-6)
    expected_loss = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert result.mean_loss == pytest.approx(expected_loss, rel=1e-5)


def test_params_of_other_dtypes_are_converted() -> None:
    built = _small_model()
    X, y = _toy_data()
    model = OrtModel(built.graphs)
    as_float64 = {n: p.astype(np.float64) for n, p in built.params.items()}
    assert model.evaluate(as_float64, X, y) == model.evaluate(built.params, X, y)
    as_lists = {n: p.tolist() for n, p in built.params.items()}
    result = model.train(
        as_lists, X.astype(np.float64), y.astype(np.int32), epochs=1, batch_size=8, lr=0.1,
        global_params=as_float64, mu=0.1, rng=np.random.default_rng(0),
    )
    assert all(p.dtype == np.float32 for p in result.params.values())


def test_train_leaves_the_callers_params_alone() -> None:
    built = _small_model()
    X, y = _toy_data()
    original = {n: p.copy() for n, p in built.params.items()}
    OrtModel(built.graphs).train(
        built.params, X, y, epochs=1, batch_size=4, lr=0.5, rng=np.random.default_rng(0)
    )
    for name, p in built.params.items():
        np.testing.assert_array_equal(p, original[name])


def test_should_stop_is_asked_between_steps() -> None:
    built = _small_model()
    X, y = _toy_data()
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    model = OrtModel(built.graphs)
    result = model.train(
        built.params, X, y, epochs=5, batch_size=4, lr=0.1, rng=np.random.default_rng(0),
        should_stop=should_stop,
    )
    assert result.stopped_early
    assert result.steps == 3 and result.samples == 12 and len(calls) == 4
    stopped_at_once = model.train(
        built.params, X, y, epochs=1, batch_size=4, lr=0.1, rng=np.random.default_rng(0),
        should_stop=lambda: True,
    )
    assert stopped_at_once.steps == 0 and np.isnan(stopped_at_once.mean_loss)
    for name, p in built.params.items():
        np.testing.assert_array_equal(stopped_at_once.params[name], p)


def test_batch_larger_than_data_is_one_full_batch() -> None:
    built = _small_model()
    X, y = _toy_data(6)
    result = OrtModel(built.graphs).train(
        built.params, X, y, epochs=2, batch_size=64, lr=0.1, rng=np.random.default_rng(0)
    )
    assert result.steps == 2 and result.samples == 12


def test_evaluate_in_batches_equals_one_batch() -> None:
    built = _small_model()
    X, y = _toy_data(50)
    model = OrtModel(built.graphs)
    whole = model.evaluate(built.params, X, y)
    batched = model.evaluate(built.params, X, y, batch_size=7)
    assert batched["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert batched["metric"] == pytest.approx(whole["metric"], rel=1e-6)
    probs = model.predict(built.params, X, batch_size=7)["probs"]
    assert probs.shape == (50, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert whole["metric"] == pytest.approx(float(np.mean(probs.argmax(axis=1) == y)))


def test_graphs_without_metadata_still_work() -> None:
    built = _small_model()
    stripped = {name: _strip_metadata(blob) for name, blob in built.graphs.items()}
    plain = OrtModel(stripped)
    assert plain.param_names == ("W0", "b0", "W1", "b1")
    assert plain.kind is None and plain.supervised
    X, y = _toy_data()
    tagged = OrtModel(built.graphs).train(
        built.params, X, y, epochs=1, batch_size=8, lr=0.1, rng=np.random.default_rng(1)
    )
    untagged = plain.train(
        built.params, X, y, epochs=1, batch_size=8, lr=0.1, rng=np.random.default_rng(1)
    )
    for name in plain.param_names:
        np.testing.assert_array_equal(tagged.params[name], untagged.params[name])


def test_missing_graph_or_input_is_a_contract_error() -> None:
    built = _small_model()
    with pytest.raises(ModelContractError, match="'eval' graph is missing"):
        OrtModel({"train_step": built.graphs["train_step"]})
    proto = onnx.load_from_string(built.graphs["train_step"])
    kept = [vi for vi in proto.graph.input if vi.name != "mu"]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    with pytest.raises(ModelContractError, match="mu"):
        OrtModel({**built.graphs, "train_step": proto.SerializeToString()})
    with pytest.raises(ModelContractError, match="cannot load the 'eval' graph"):
        OrtModel({**built.graphs, "eval": b"not an onnx model"})


def test_mismatched_graphs_are_a_contract_error() -> None:
    small = _small_model()
    other = build_model(ModelSpec("mlp", 5, 3, (6,), seed=3))
    with pytest.raises(ModelContractError, match="eval: parameter 'W0' has shape"):
        OrtModel({**small.graphs, "eval": other.graphs["eval"]})


def test_params_that_do_not_fit_are_a_contract_error() -> None:
    built = _small_model()
    model = OrtModel(built.graphs)
    X, y = _toy_data()
    rng = np.random.default_rng(0)
    wrong_shape = {**built.params, "W0": np.zeros((5, 7), np.float32)}
    with pytest.raises(ModelContractError, match=r"'W0' has shape \(5, 7\).*\(5, 4\)"):
        model.train(wrong_shape, X, y, epochs=1, batch_size=4, lr=0.1, rng=rng)
    missing = {n: p for n, p in built.params.items() if n != "b1"}
    with pytest.raises(ModelContractError, match=r"missing parameter.*b1"):
        model.evaluate(missing, X, y)
    extra = {**built.params, "W9": np.zeros(1, np.float32)}
    with pytest.raises(ModelContractError, match="W9"):
        model.predict(extra, X)


def test_bad_data_and_arguments_are_value_errors() -> None:
    built = _small_model()
    model = OrtModel(built.graphs)
    X, y = _toy_data()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="X has 4 features, the model expects 5"):
        model.evaluate(built.params, X[:, :4], y)
    with pytest.raises(ValueError, match="labels y are required"):
        model.evaluate(built.params, X, None)
    with pytest.raises(ValueError, match="class indices below 3"):
        model.evaluate(built.params, X, np.full(len(X), 3))
    with pytest.raises(ValueError, match="class indices"):
        model.evaluate(built.params, X, np.full(len(X), -1))
    with pytest.raises(ValueError, match="1-D integer array"):
        model.evaluate(built.params, X, y.astype(np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        model.evaluate(built.params, X, y, batch_size=0)
    with pytest.raises(ValueError, match="epochs"):
        model.train(built.params, X, y, epochs=0, batch_size=4, lr=0.1, rng=rng)
    with pytest.raises(ValueError, match="lr"):
        model.train(built.params, X, y, epochs=1, batch_size=4, lr=float("nan"), rng=rng)
    auto = _small_model("autoencoder")
    with pytest.raises(ValueError, match="unsupervised"):
        OrtModel(auto.graphs).evaluate(auto.params, X, y)


def _third_party_eval() -> bytes:
    """An eval graph written by hand, with SoftmaxCrossEntropyLoss and no metadata."""
    h = onnx.helper
    f = onnx.TensorProto.FLOAT
    nodes = [
        h.make_node("Gemm", ["X", "W0", "b0"], ["z0"]),
        h.make_node("Relu", ["z0"], ["h0"]),
        h.make_node("Gemm", ["h0", "W1", "b1"], ["logits"]),
        h.make_node("SoftmaxCrossEntropyLoss", ["logits", "y"], ["loss"], reduction="mean"),
        h.make_node("Identity", ["loss"], ["metric"]),
    ]
    inputs = [
        h.make_tensor_value_info("W0", f, [5, 4]), h.make_tensor_value_info("b0", f, [4]),
        h.make_tensor_value_info("W1", f, [4, 3]), h.make_tensor_value_info("b1", f, [3]),
        h.make_tensor_value_info("X", f, ["n", 5]),
        h.make_tensor_value_info("y", onnx.TensorProto.INT64, ["n"]),
    ]
    outputs = [h.make_tensor_value_info("loss", f, []), h.make_tensor_value_info("metric", f, [])]
    graph = h.make_graph(nodes, "third_party_eval", inputs, outputs)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    data: bytes = model.SerializeToString()
    return data


def _strip_metadata(blob: bytes) -> bytes:
    proto = onnx.load_from_string(blob)
    del proto.metadata_props[:]
    data: bytes = proto.SerializeToString()
    return data


def test_runtime_failure_is_a_model_run_error() -> None:
    built = _small_model()
    graphs = {
        "train_step": _strip_metadata(built.graphs["train_step"]),
        "eval": _third_party_eval(),
    }
    model = OrtModel(graphs)
    assert model.n_classes is None  # no infer graph, no metadata: labels cannot be range-checked
    X, y = _toy_data()
    assert model.evaluate(built.params, X, y)["loss"] == pytest.approx(
        OrtModel(built.graphs).evaluate(built.params, X, y)["loss"], rel=1e-5
    )
    with pytest.raises(ModelRunError, match="eval failed in onnxruntime"):
        model.evaluate(built.params, X, np.full(len(X), 40))


def test_predict_needs_an_infer_graph() -> None:
    built = _small_model()
    model = OrtModel({k: v for k, v in built.graphs.items() if k != "infer"})
    assert not model.has_infer
    with pytest.raises(ModelContractError, match="no 'infer' graph"):
        model.predict(built.params, _toy_data()[0])


def test_thread_count_is_validated_and_used() -> None:
    built = _small_model()
    with pytest.raises(ValueError, match="intra_op_threads"):
        OrtModel(built.graphs, intra_op_threads=0)
    X, y = _toy_data()
    one = OrtModel(built.graphs).evaluate(built.params, X, y)
    two = OrtModel(built.graphs, intra_op_threads=2).evaluate(built.params, X, y)
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
