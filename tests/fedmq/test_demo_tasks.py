"""``fedmq demo --task``: what each task writes before anything runs (no broker): a config
that loads, a model whose architecture loads, data shards of the right shapes, and one line
when the vibration model is missing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fedmq import demo, demo_tasks
from fedmq.demo import prepare_demo
from fedmq.errors import ToolError
from orchestrator.models.architecture import initial_model

DEVICES = 4


def test_vibration_writes_an_imported_model_and_one_shard_per_machine(tmp_path: Path) -> None:
    setup = prepare_demo(tmp_path / "demo", task="vibration", devices=DEVICES)

    model = setup.config.model
    assert model.spec is None and model.graphs_dir == setup.out / "model-graphs"
    arch, params = initial_model(model)
    assert set(arch.graphs) == {"train_step", "eval", "infer"}
    assert params["conv1.weight"].shape == (16, 3, 7) and params["fc.weight"].shape == (4, 32)
    assert setup.config.stopping.target_metric == demo_tasks.TASKS["vibration"].target
    assert len(setup.data.shards) == DEVICES
    for shard in setup.data.shards:
        assert shard.X.shape == (200, 3 * 128) and shard.X.dtype == np.float32
        assert shard.y is not None and shard.y.dtype == np.int64
        assert set(shard.y.tolist()) == {0, 1, 2, 3}
    with np.load(setup.out / "validation.npz") as held_out:
        assert held_out["X"].shape == (4 * 200, 3 * 128) and held_out["y"].shape == (800,)
        # the held-out machines are not any training machine
        trained = np.concatenate([s.X for s in setup.data.shards])
        assert not np.isin(held_out["X"][:, 0], trained[:, 0]).any()
    assert "800 held-out samples from 4 unseen machines" in setup.description


def test_digits_keeps_the_built_in_mlp(tmp_path: Path) -> None:
    setup = prepare_demo(tmp_path / "demo", devices=DEVICES)

    assert setup.task.name == "digits"
    assert setup.config.model.spec is not None and setup.config.model.spec.kind == "mlp"
    assert setup.config.stopping.target_metric == 0.94
    assert len(setup.data.shards) == DEVICES


def test_digits_cnn_trains_the_imported_2d_cnn_on_the_digits_shards(tmp_path: Path) -> None:
    setup = prepare_demo(tmp_path / "demo", task="digits-cnn", devices=DEVICES)
    mlp = prepare_demo(tmp_path / "mlp", devices=DEVICES)

    model = setup.config.model
    assert model.spec is None and model.graphs_dir == setup.out / "model-graphs"
    _, params = initial_model(model)
    assert params["conv1.weight"].shape == (16, 1, 3, 3)
    for cnn, dense in zip(setup.data.shards, mlp.data.shards, strict=True):
        np.testing.assert_array_equal(cnn.X, dense.X)  # the same data as the MLP demo


def test_a_missing_vibration_model_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(demo_tasks, "VIBRATION_MODEL", Path("examples/models/absent.onnx"))
    with pytest.raises(ToolError, match=re.escape("needs examples/models/absent.onnx")):
        prepare_demo(tmp_path / "a", task="vibration", devices=DEVICES)

    assert demo.main(["--task", "vibration", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedmq demo: --task vibration needs ")


def test_anomaly_standardises_and_keeps_the_faults_for_afterwards(tmp_path: Path) -> None:
    setup = prepare_demo(tmp_path / "demo", task="anomaly", devices=DEVICES)
    cfg = setup.config
    assert cfg.standardize.enabled and cfg.evaluation.federated_every == 1
    assert cfg.model.spec is not None and cfg.model.spec.kind == "autoencoder"
    assert all(s.y is None and s.n_features == 192 for s in setup.data.shards)
    test = setup.anomaly_test
    assert test is not None and len(test.X) == DEVICES * 200
    assert 0.2 < test.is_anomaly.mean() < 0.3
    assert setup.task.holdout == 0.5
