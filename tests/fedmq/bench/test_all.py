"""``fedmq bench all``: every benchmark in turn, one JSON object keyed by name at the end."""

from __future__ import annotations

import json

import pytest

from fedmq.bench import cli as bench


def test_all_runs_the_selection_and_keys_the_json_by_name(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["all", "--quick", "--only", "agent"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    results = json.loads(lines[-1])
    assert list(results) == ["agent"]
    assert results["agent"]["bench"] == "agent" and results["agent"]["steps"] == 20
    assert any("train_step_us" in line for line in lines[:-1])  # its table came first


def test_all_records_a_failing_benchmark_and_goes_on(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "BENCHMARKS", {"missing": "fedmq.bench._no_such_module",
                                              "agent": "fedmq.bench.agent"})
    assert bench.main(["all", "--quick"]) == 1
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(results) == ["missing", "agent"]
    assert "no_such_module" in results["missing"]["error"]
    assert results["agent"]["bench"] == "agent"


def test_all_lists_every_benchmark_in_order() -> None:
    assert list(bench.BENCHMARKS) == ["agent", "ingest", "wire", "async-vs-sync", "fleet",
                                      "flood", "secagg"]


def test_all_refuses_an_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        bench.main(["all", "--only", "warp-drive"])
    assert info.value.code == 2
    assert "warp-drive" in capsys.readouterr().err
