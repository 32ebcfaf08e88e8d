"""``fedmq bench``: registry dispatch, table then JSON as the last line, readable errors."""

from __future__ import annotations

import importlib
import json

import pytest

from fedmq.bench import cli as bench
from fedmq.cli import main as fedmq_main


def test_every_registered_benchmark_has_the_interface() -> None:
    for name, module_path in bench.BENCHMARKS.items():
        module = importlib.import_module(module_path)
        assert callable(module.add_arguments) and callable(module.run), name


def test_agent_bench_prints_json_last(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "agent", "--steps", "4", "--warmup", "1", "--hidden", "8", "--batch-size",
            "16"]
    assert fedmq_main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["bench"] == "agent" and result["batch_size"] == 16
    assert any("train_step_us" in line for line in lines[:-1])  # the human table came first


def test_unknown_benchmark_is_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["warp-drive"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "unknown benchmark 'warp-drive'" in captured.err and "agent" in captured.err


def test_help_lists_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main([]) == 0
    assert bench.main(["--help"]) == 0
    assert "agent" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        bench.main(["agent", "--help"])
    assert info.value.code == 0
    assert "fedmq bench agent" in capsys.readouterr().out
