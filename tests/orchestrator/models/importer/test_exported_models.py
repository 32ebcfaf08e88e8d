"""The compiler on models exported by real tools (``examples/models``: torch.onnx.export,
skl2onnx, a tf2onnx-style dense graph), with no framework installed: gradients against float64
finite differences, and one local epoch against the exporting framework's own (or a numpy)
SGD epoch, recorded beside each model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from orchestrator.models.importer import ImportedModel, compile_model
from tests.orchestrator.models.importer._build import to_double

MODELS = Path(__file__).resolve().parents[4] / "examples" / "models"
EXPORTED = ["conv1d_vibration", "conv2d_digits", "conv2d_grouped", "mlp_digits_skl",
            "keras_style_dense"]
_SAMPLED = 8  # finite-difference coordinates per parameter tensor (all of a smaller one)


def _compiled(name: str) -> tuple[ImportedModel, dict[str, np.ndarray]]:
    imported = compile_model((MODELS / f"{name}.onnx").read_bytes(), loss="cross_entropy")
    with np.load(MODELS / f"{name}_reference.npz") as archive:
        reference = {k: archive[k] for k in archive.files}
    return imported, reference


def _feeds(imported: ImportedModel, params: dict[str, np.ndarray], X: np.ndarray,
           y: np.ndarray, lr: float) -> dict[str, np.ndarray]:
    return {**params, "X": X.reshape(len(X), -1).astype(np.float32), "y": y.astype(np.int64),
            "lr": np.array(lr, np.float32), "mu": np.array(0.0, np.float32),
            **{f"{n}_global": v for n, v in params.items()}}


@pytest.mark.parametrize("name", EXPORTED)
def test_one_local_epoch_matches_the_exporting_frameworks(name: str) -> None:
    imported, ref = _compiled(name)
    assert sorted(imported.params) == sorted(str(n) for n in ref["trainable"])
    for n, value in imported.params.items():
        np.testing.assert_array_equal(value.reshape(ref[f"init/{n}"].shape), ref[f"init/{n}"])
    session = ort.InferenceSession(imported.graphs["train_step"])
    params = dict(imported.params)
    batch, X, y = int(ref["batch_size"]), ref["X"], ref["y"]
    losses = []
    for start in range(0, len(X), batch):
        feeds = _feeds(imported, params, X[start:start + batch], y[start:start + batch],
                       float(ref["lr"]))
        *new, loss = session.run([*(f"{n}_new" for n in params), "loss"], feeds)
        params = dict(zip(params, new, strict=True))
        losses.append(float(loss))
    np.testing.assert_allclose(losses, ref["losses"], rtol=1e-4, atol=1e-5)
    for n, value in params.items():
        np.testing.assert_allclose(value.reshape(ref[f"after/{n}"].shape), ref[f"after/{n}"],
                                   rtol=0, atol=1e-4, err_msg=n)


@pytest.mark.parametrize("name", EXPORTED)
def test_whole_model_gradients_match_float64_finite_differences(name: str) -> None:
    imported, ref = _compiled(name)
    X, y = ref["X"][:6], ref["y"][:6]
    feeds = _feeds(imported, imported.params, X, y, 1.0)
    train = ort.InferenceSession(imported.graphs["train_step"])
    new = train.run([f"{n}_new" for n in imported.params], feeds)
    analytic = {n: imported.params[n].astype(np.float64) - p
                for n, p in zip(imported.params, new, strict=True)}
    evaluator = ReferenceEvaluator(to_double(imported.graphs["eval"]))
    point = {n: v.astype(np.float64) for n, v in imported.params.items()}
    data = {"X": feeds["X"].astype(np.float64), "y": feeds["y"]}

    def loss() -> float:
        return float(evaluator.run(["loss"], {**point, **data})[0])

    rng = np.random.default_rng(0)
    eps = 1e-6
    for n, value in point.items():
        flat = value.reshape(-1)
        picked = rng.choice(flat.size, min(_SAMPLED, flat.size), replace=False)
        numeric, exact = [], analytic[n].reshape(-1)[picked]
        for i in picked:
            keep = flat[i]
            flat[i] = keep + eps
            up = loss()
            flat[i] = keep - eps
            down = loss()
            flat[i] = keep
            numeric.append((up - down) / (2 * eps))
        scale = max(float(np.abs(numeric).max()), 1e-4)
        error = float(np.abs(exact - np.asarray(numeric)).max()) / scale
        assert error <= 1e-3, f"{name}: {n}: relative error {error:.2e}"
