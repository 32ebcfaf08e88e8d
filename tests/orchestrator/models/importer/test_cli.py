"""``fedmq model import``: writes the directory, or one line on stderr, exit 2, nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.cli import model as model_cli

from ._build import Net


def _model(tmp_path: Path) -> Path:
    net = Net((4,))
    out = net.op("Gemm", "input", net.param((4, 3), name="dense.w"), net.param((3,)))
    path = tmp_path / "model.onnx"
    path.write_bytes(net.build(out))
    return path


def test_import_writes_the_graphs_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "graphs"
    code = model_cli.main(["import", str(_model(tmp_path)), "--loss", "cross_entropy",
                           "--freeze", "dense.w", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "train_step.onnx").is_file() and (out / "params.npz").is_file()
    assert "3 classes" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "message"), [
    (["--labels", "5"], "--labels 5: the model outputs 3 classes"),
    (["--freeze", "nope"], "no float initializer named 'nope'"),
])
def test_import_mistakes_are_one_line_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
        message: str) -> None:
    out = tmp_path / "graphs"
    code = model_cli.main(["import", str(_model(tmp_path)), "--loss", "cross_entropy",
                           *extra, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_import_of_a_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx at all")
    code = model_cli.main(["import", str(bad), "--loss", "mse", "-o", str(tmp_path / "o")])
    assert code == 2 and "not a readable ONNX model" in capsys.readouterr().err


def _data(tmp_path: Path, X: object, y: object | None = None) -> str:
    path = tmp_path / "sample.npz"
    arrays = {"X": X} if y is None else {"X": X, "y": y}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def test_import_checks_a_data_sample_that_fits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = _data(tmp_path, np.zeros((5, 4), np.float32), np.array([0, 1, 2, 2, 0]))
    code = model_cli.main(["import", str(_model(tmp_path)), "--loss", "cross_entropy",
                           "--data", sample, "-o", str(tmp_path / "graphs")])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(("X", "y", "message"), [
    (np.zeros((5, 6), np.float32), np.zeros(5, np.int64),
     "6 features per sample, the model takes 4 (input 4)"),
    (np.zeros((5, 4), np.float32), np.array([0, 1, 7, 2, 9]),
     "2 label(s) outside 0..2 (the model has 3 classes), e.g. 7"),
    (np.zeros((5, 4), np.float32), None, "no array 'y' (labels)"),
])
def test_data_that_does_not_fit_is_one_line_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], X: np.ndarray,
        y: np.ndarray | None, message: str) -> None:
    model = _model(tmp_path)
    sample = _data(tmp_path, X, y)
    out = tmp_path / "graphs"
    code = model_cli.main(["import", str(model), "--loss", "cross_entropy", "--data", sample,
                           "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()
