"""``fedmq model import``: writes the directory, or one line on stderr, exit 2, nothing."""

from __future__ import annotations

from pathlib import Path

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
