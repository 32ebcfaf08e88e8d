"""The numpy reference of the conv1d bench is the same SGD step as the compiled train_step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.trainer import OrtModel
from fedmq.bench._numpy_conv1d import PARAM_NAMES, numpy_step
from fedmq.bench.agent import CONV1D_MODEL, frozen_batchnorm
from fedmq.datasets.vibration import make_vibration
from orchestrator.models.importer import compile_model

_MODEL = Path(__file__).resolve().parents[3] / CONV1D_MODEL


def test_one_step_gives_the_parameters_onnx_runtime_gives() -> None:
    exported = _MODEL.read_bytes()
    imported = compile_model(exported, loss="cross_entropy")
    model = OrtModel(imported.graphs)
    assert set(model.param_names) == set(PARAM_NAMES)
    ((X, y),) = make_vibration(1, 24, seed=3)
    params = dict(imported.params)
    anchor = {n: p + np.float32(0.1) for n, p in params.items()}  # FedProx pulls too
    lr, mu = 0.5, 0.01
    result = model.train(params, X, y, epochs=1, batch_size=len(X), lr=lr, mu=mu,
                         global_params=anchor, rng=np.random.default_rng(0))
    new, loss = numpy_step([params[n] for n in PARAM_NAMES], [anchor[n] for n in PARAM_NAMES],
                           X, y, lr, mu, frozen_batchnorm(exported))
    assert abs(loss - result.mean_loss) < 1e-5
    for name, value in zip(PARAM_NAMES, new, strict=True):
        assert value.dtype == np.float32 and value.shape == params[name].shape
        np.testing.assert_allclose(value, result.params[name], rtol=0, atol=1e-5, err_msg=name)
        # every tensor moved well beyond the tolerance, so agreeing is not trivial
        assert np.abs(result.params[name] - params[name]).max() > 1e-3, name
