"""Delta maths and one training task end to end in a thread-free call (real onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.data import LocalData
from edge_agent.delta import add_gaussian_noise, clip_global_norm, global_norm, model_delta
from edge_agent.optim import OptimizerSpec
from edge_agent.state import StoredModel
from edge_agent.trainer import OrtModel
from edge_agent.training import train_update
from orchestrator.models import BuiltModel
from schemas import Codec, CodecSpec, ErrorFeedback, Optimizer, Task, decode_params


def _delta() -> dict[str, np.ndarray]:
    return {"W": np.full((3, 4), 2.0, np.float32), "b": np.full(9, -2.0, np.float32)}


def test_global_norm_and_clipping() -> None:
    delta = _delta()
    assert global_norm(delta) == pytest.approx(np.sqrt(21 * 4.0))
    clipped, norm = clip_global_norm(delta, 1.0)
    assert norm == pytest.approx(np.sqrt(84.0))
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    assert np.allclose(clipped["W"] / clipped["W"][0, 0], 1.0)  # direction kept
    small, _ = clip_global_norm(delta, 100.0)
    assert all(np.array_equal(small[k], delta[k]) for k in delta)
    zero, norm = clip_global_norm({"W": np.zeros(3, np.float32)}, 1.0)
    assert norm == 0.0 and not zero["W"].any()
    with pytest.raises(ValueError):
        clip_global_norm(delta, 0.0)


def test_gaussian_noise_has_the_asked_spread() -> None:
    noisy = add_gaussian_noise({"W": np.zeros(200_000, np.float32)}, 0.3,
                               np.random.default_rng(1))
    assert noisy["W"].dtype == np.float32
    assert noisy["W"].std() == pytest.approx(0.3, rel=0.02)
    assert abs(noisy["W"].mean()) < 0.01


def test_model_delta_is_local_minus_base() -> None:
    base = {"W": np.ones(3, np.float32)}
    assert np.array_equal(model_delta({"W": np.full(3, 3.0)}, base)["W"], np.full(3, 2.0))


@pytest.fixture
def ort(built_model: BuiltModel) -> OrtModel:
    return OrtModel(built_model.graphs)


def _task(**fields: object) -> Task:
    defaults: dict[str, object] = {"task_id": "t1", "model_version": 1, "epochs": 2,
                                   "batch_size": 32, "lr": 0.1}
    return Task(**(defaults | fields))  # type: ignore[arg-type]


def test_train_update_lowers_the_loss_and_reports_provenance(
    ort: OrtModel, built_model: BuiltModel, shard: LocalData,
) -> None:
    base = StoredModel(1, built_model.params, built_model.graphs)
    before = ort.evaluate(base.params, shard.X, shard.y)["loss"]
    out = train_update(ort, base, _task(codec=CodecSpec(Codec.FLOAT32), epochs=5), shard,
                       feedback=ErrorFeedback(), rng=np.random.default_rng(0),
                       noise_rng=np.random.default_rng(1), device_class="pi4")
    assert out.update is not None
    u = out.update
    assert (u.task_id, u.base_version, u.num_samples) == ("t1", 1, 300)
    assert u.local_steps == 5 * 10 and u.device_class == "pi4" and u.codec is Codec.FLOAT32
    assert u.clip_norm is None and u.noise_multiplier == 0.0 and u.train_ms > 0
    assert out.step_time_ms == pytest.approx(u.train_ms / u.local_steps)
    local = {k: built_model.params[k] + v for k, v in decode_params(u.tensors).items()}
    assert ort.evaluate(local, shard.X, shard.y)["loss"] < before


def test_clip_noise_and_error_feedback(
    ort: OrtModel, built_model: BuiltModel, shard: LocalData,
) -> None:
    base = StoredModel(1, built_model.params, built_model.graphs)
    feedback = ErrorFeedback()
    task = _task(clip_norm=0.5, codec=CodecSpec(Codec.FLOAT32))
    out = train_update(ort, base, task, shard, feedback=feedback,
                       rng=np.random.default_rng(0), noise_rng=np.random.default_rng(1))
    assert out.update is not None and out.delta_norm is not None and out.delta_norm > 0.5
    assert global_norm(decode_params(out.update.tensors)) == pytest.approx(0.5, rel=1e-5)
    assert out.update.clip_norm == 0.5

    noisy = train_update(ort, base, _task(clip_norm=0.5, noise_multiplier=2.0), shard,
                         feedback=feedback, rng=np.random.default_rng(0),
                         noise_rng=np.random.default_rng(1))
    assert noisy.update is not None and noisy.update.noise_multiplier == 2.0
    assert global_norm(decode_params(noisy.update.tensors)) > 5.0  # std 1.0 over 650 values
    # noise without a clip bound is not applied, and the update says so
    unclipped = train_update(ort, base, _task(noise_multiplier=2.0), shard, feedback=feedback,
                             rng=np.random.default_rng(0), noise_rng=np.random.default_rng(1))
    assert unclipped.update is not None and unclipped.update.noise_multiplier == 0.0

    # a lossy codec leaves a residual in a new ErrorFeedback; the one passed in is untouched
    lossy = train_update(ort, base, _task(codec=CodecSpec(Codec.TOPK, topk_fraction=0.05)),
                         shard, feedback=feedback, rng=np.random.default_rng(0),
                         noise_rng=np.random.default_rng(1))
    assert feedback.residual == {}
    assert lossy.feedback is not feedback
    assert any(np.abs(v).max() > 0 for v in lossy.feedback.residual.values())


def test_an_immediate_stop_sends_nothing(
    ort: OrtModel, built_model: BuiltModel, shard: LocalData,
) -> None:
    base = StoredModel(1, built_model.params, built_model.graphs)
    out = train_update(ort, base, _task(), shard, feedback=ErrorFeedback(),
                       rng=np.random.default_rng(0), noise_rng=np.random.default_rng(1),
                       should_stop=lambda: True)
    assert out.update is None and out.result.stopped_early and out.step_time_ms is None


def test_the_tasks_optimizer_trains_and_is_reported(
    ort: OrtModel, built_model: BuiltModel, shard: LocalData,
) -> None:
    base = StoredModel(1, built_model.params, built_model.graphs)
    task = _task(codec=CodecSpec(Codec.FLOAT32), optimizer=Optimizer.ADAM, lr=0.01, beta2=0.99,
                 weight_decay=0.01, mu=0.1)
    out = train_update(ort, base, task, shard, feedback=ErrorFeedback(),
                       rng=np.random.default_rng(0), noise_rng=np.random.default_rng(1))
    assert out.update is not None and out.update.optimizer is Optimizer.ADAM
    expected = ort.train(base.params, shard.X, shard.y, epochs=2, batch_size=32, lr=0.01,
                         mu=0.1, rng=np.random.default_rng(0),
                         optimizer=OptimizerSpec("adam", beta2=0.99, weight_decay=0.01))
    for name, delta in decode_params(out.update.tensors).items():
        np.testing.assert_allclose(base.params[name] + delta, expected.params[name], atol=1e-6)
    plain = train_update(ort, base, _task(), shard, feedback=ErrorFeedback(),
                         rng=np.random.default_rng(0), noise_rng=np.random.default_rng(1))
    assert plain.update is not None and plain.update.optimizer is Optimizer.SGD
