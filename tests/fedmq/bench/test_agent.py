"""The agent benchmark runs a real child process end to end (tiny sizes; no timing checks)."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from fedmq.bench import BenchError, agent

_HAS_TORCH = importlib.util.find_spec("torch") is not None


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    agent.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_describe_the_100k_mlp() -> None:
    args = _args()
    assert args.hidden == (256, 256) and args.batch_size == 32 and args.threads == 1
    assert args.model == "mlp"


def test_small_run_reports_every_figure() -> None:
    result = agent.run(_args("--steps", "6", "--warmup", "2", "--hidden", "16,8",
                             "--batch-size", "8"))
    for key in ("rss_mb", "train_step_us", "numpy_step_us", "ort_vs_numpy"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["params"] == 64 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10
    assert result["batch_size"] == 8
    assert result["targets"] == {"rss_mb": 120.0, "ort_vs_numpy": 1.0}
    assert set(result["targets_met"]) == {"rss_mb", "ort_vs_numpy"}
    # the numpy step is the same maths as the graph: one step from the same start agrees
    assert result["max_param_diff"] < 1e-5
    assert (result["ort_vs_torch"] is None) is not _HAS_TORCH


def test_conv1d_run_reports_every_figure() -> None:
    result = agent.run(_args("--model", "conv1d", "--steps", "4", "--warmup", "2",
                             "--batch-size", "8"))
    assert result["model"].startswith("conv1d conv1d_vibration.onnx")
    assert result["params"] == 3108 and result["data"].startswith("vibration 1024x384")
    for key in ("rss_mb", "train_step_us", "numpy_step_us", "ort_vs_numpy"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["max_param_diff"] < 1e-5
    if _HAS_TORCH:
        assert result["ort_vs_torch"] > 0 and result["torch_max_param_diff"] < 1e-5
    else:
        assert result["ort_vs_torch"] is None and result["torch"] is None


def test_conv1d_without_the_checkout_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent, "CONV1D_MODEL", Path("examples/models/absent.onnx"))
    needs = re.escape("--model conv1d needs examples/models/absent.onnx")
    with pytest.raises(BenchError, match=needs) as info:
        agent.run(_args("--model", "conv1d"))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "argv", [("--steps", "0"), ("--hidden", "x"), ("--hidden", "8,-1"), ("--threads", "-2"),
             ("--model", "cnn")]
)
def test_bad_arguments_are_rejected(
    argv: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        _args(*argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err
