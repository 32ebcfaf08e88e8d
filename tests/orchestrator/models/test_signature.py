"""``model_signature``: what an enrollment bundle says about the federation's model, from a
built-in spec or a graphs_dir, and nothing when the graphs cannot tell."""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import ModelConfig
from orchestrator.models import ModelSpec
from orchestrator.models.architecture import model_signature
from orchestrator.models.importer import compile_model, write_model_dir
from tests.support.paths import REPO


def test_a_built_in_spec() -> None:
    assert model_signature(ModelConfig(ModelSpec("mlp", 64, 10, hidden=(8,)), None)) == (64, 10)
    assert model_signature(ModelConfig(ModelSpec("autoencoder", 12, hidden=(4,)), None)) == (12, 0)


def test_a_graphs_dir_from_model_import(tmp_path: Path) -> None:
    data = (REPO / "examples" / "models" / "conv1d_vibration.onnx").read_bytes()
    write_model_dir(compile_model(data, loss="cross_entropy"), tmp_path / "cnn")
    assert model_signature(ModelConfig(None, tmp_path / "cnn")) == (3 * 128, 4)


def test_graphs_that_cannot_tell_say_nothing(tmp_path: Path) -> None:
    assert model_signature(ModelConfig(None, tmp_path / "missing")) == (0, 0)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "train_step.onnx").write_bytes(b"not onnx")
    assert model_signature(ModelConfig(None, tmp_path / "junk")) == (0, 0)
