"""The gradients written out in the train_step graphs agree with the eval graphs' own loss."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from orchestrator.models import ModelSpec, build_model

SPECS = {
    "softmax": ModelSpec("softmax", 6, 4, seed=1),
    "logistic": ModelSpec("logistic", 6, seed=2),
    "mlp_relu": ModelSpec("mlp", 6, 4, (5, 3), "relu", seed=3),
    "mlp_tanh": ModelSpec("mlp", 6, 4, (5, 3), "tanh", seed=4),
    "autoencoder_tanh": ModelSpec("autoencoder", 6, 0, (4, 2, 4), "tanh", seed=5),
    "autoencoder_relu": ModelSpec("autoencoder", 6, 0, (5, 3, 5), "relu", seed=6),
}
BATCH = 10
EPS = 1e-2  # central differences in float32: truncation ~eps², rounding ~1e-7/eps


class _Graphs:
    def __init__(self, spec: ModelSpec) -> None:
        built = build_model(spec)
        self.spec = spec
        self.train = ort.InferenceSession(built.graphs["train_step"])
        self.eval = ort.InferenceSession(built.graphs["eval"])
        rng = np.random.default_rng(spec.seed + 100)
        # non-zero biases and off-init weights so that every gradient is exercised
        self.params = {
            name: (p + rng.normal(0.0, 0.3, size=p.shape)).astype(np.float32)
            for name, p in built.params.items()
        }
        self.X = rng.normal(size=(BATCH, spec.n_features)).astype(np.float32)
        self.y = rng.integers(0, spec.n_classes, BATCH) if spec.supervised else None

    def data(self) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {"X": self.X}
        if self.y is not None:
            feeds["y"] = self.y
        return feeds

    def loss(self, params: dict[str, np.ndarray]) -> float:
        (value,) = self.eval.run(["loss"], {**params, **self.data()})
        return float(value)

    def step(
        self, params: dict[str, np.ndarray], lr: float, mu: float, anchor: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], float]:
        feeds = {**params, **self.data(), "lr": np.array(lr, np.float32)}
        feeds["mu"] = np.array(mu, np.float32)
        feeds.update({f"{n}_global": a for n, a in anchor.items()})
        names = list(params)
        *new, loss = self.train.run([f"{n}_new" for n in names] + ["loss"], feeds)
        return dict(zip(names, new, strict=True)), float(loss)


@pytest.fixture(params=list(SPECS), ids=list(SPECS))
def graphs(request: pytest.FixtureRequest) -> _Graphs:
    return _Graphs(SPECS[request.param])


def test_gradient_matches_finite_differences(graphs: _Graphs) -> None:
    params = graphs.params
    new, _ = graphs.step(params, lr=1.0, mu=0.0, anchor=params)
    rng = np.random.default_rng(0)
    analytic, numeric = [], []
    for name, p in params.items():
        grad = (p - new[name]).ravel()
        for i in rng.choice(p.size, size=min(p.size, 8), replace=False):
            plus = {**params, name: p.copy()}
            minus = {**params, name: p.copy()}
            plus[name].ravel()[i] += EPS
            minus[name].ravel()[i] -= EPS
            numeric.append((graphs.loss(plus) - graphs.loss(minus)) / (2 * EPS))
            analytic.append(grad[i])
    analytic_a, numeric_a = np.array(analytic), np.array(numeric)
    assert np.linalg.norm(analytic_a) > 1e-2, "degenerate check: gradients are all ~0"
    relative = np.linalg.norm(analytic_a - numeric_a) / np.linalg.norm(numeric_a)
    assert relative < 3e-3, (relative, np.c_[analytic_a, numeric_a])
    np.testing.assert_allclose(analytic_a, numeric_a, rtol=2e-2, atol=1e-3)


def test_step_loss_is_the_data_loss_before_the_step(graphs: _Graphs) -> None:
    anchor = {n: p + 0.5 for n, p in graphs.params.items()}
    _, loss = graphs.step(graphs.params, lr=0.1, mu=3.0, anchor=anchor)
    assert loss == pytest.approx(graphs.loss(graphs.params), rel=1e-5)


def test_proximal_term_pulls_towards_global(graphs: _Graphs) -> None:
    lr, mu = 0.1, 0.7
    rng = np.random.default_rng(1)
    anchor = {
        n: (p + rng.normal(0.0, 1.0, size=p.shape)).astype(np.float32)
        for n, p in graphs.params.items()
    }
    plain, _ = graphs.step(graphs.params, lr=lr, mu=0.0, anchor=anchor)
    prox, _ = graphs.step(graphs.params, lr=lr, mu=mu, anchor=anchor)
    for name, p in graphs.params.items():
        expected = -lr * mu * (p - anchor[name])
        np.testing.assert_allclose(prox[name] - plain[name], expected, rtol=1e-4, atol=1e-6)


def test_sgd_step_is_p_minus_lr_grad(graphs: _Graphs) -> None:
    unit, _ = graphs.step(graphs.params, lr=1.0, mu=0.0, anchor=graphs.params)
    small, _ = graphs.step(graphs.params, lr=0.25, mu=0.0, anchor=graphs.params)
    for name, p in graphs.params.items():
        np.testing.assert_allclose(p - small[name], 0.25 * (p - unit[name]), atol=1e-6)
