"""``fedmq bench secagg --quick``: every bucket runs all its stages, its sum checks out, and the
figures are consistent with the bucket plan."""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import pytest

from fedmq.bench import BenchError, secagg
from fedmq.bench.cli import main as bench_main
from orchestrator.config import SecureAggregationConfig
from orchestrator.secagg.bucket import BucketState, Unmasked
from orchestrator.secagg.plan import BucketPlan
from schemas.secagg.wire import ring_bytes

ROW_KEYS = ("bits", "degree", "threshold", "bytes_per_member", "bytes_by_message",
            "plain_int8_bytes", "bytes_ratio", "device_mask_ms", "device_shares_ms",
            "orchestrator_cpu_ms", "unmask_ms")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    secagg.add_arguments(parser)
    return parser.parse_args(list(argv))


def _plan(n: int) -> BucketPlan:
    return BucketPlan(SecureAggregationConfig(bucket_size=n),
                      clip_norm=SecureAggregationConfig().clip_norm)


def _check_row(n: int, row: dict[str, Any], params: int) -> None:
    for key in ROW_KEYS:
        assert key in row, key
    plan = _plan(n)
    assert (row["bits"], row["degree"], row["threshold"]) == (
        plan.bits(n), plan.degree(n), plan.threshold(n))
    assert set(row["bytes_by_message"]) == set(secagg.STAGES)
    assert row["bytes_per_member"] == pytest.approx(sum(row["bytes_by_message"].values()),
                                                    abs=0.5)
    assert row["bytes_by_message"]["input"] > ring_bytes(params, row["bits"])
    assert row["bytes_ratio"] > 1
    assert row["bytes_ratio"] == pytest.approx(
        row["bytes_per_member"] / row["plain_int8_bytes"], rel=1e-3)
    # the bench raised BenchError otherwise; the figure it reports is within the bound
    assert 0 <= row["max_error"] <= row["tolerance"]
    for key in ("device_mask_ms", "device_shares_ms", "orchestrator_cpu_ms", "unmask_ms"):
        assert row[key] >= 0


def test_quick_run_reports_every_size_with_a_correct_sum() -> None:
    result = secagg.run(_args("--quick"))
    assert result["params"] == secagg.QUICK_PARAMS
    assert list(result["sizes"]) == [str(n) for n in secagg.QUICK_SIZES]
    for n in secagg.QUICK_SIZES:
        _check_row(n, result["sizes"][str(n)], secagg.QUICK_PARAMS)
    drop = result["dropout_n32"]
    _check_row(32, drop, secagg.QUICK_PARAMS)
    assert (drop["members"], drop["dropped"], drop["survivors"]) == (32, 6, 26)
    assert result["bytes_ratio_n32"] is None  # 32 is not among the quick sizes
    json.dumps(result)  # the cli prints it as JSON


def test_cli_prints_the_table_then_the_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["secagg", "--sizes", "3,32", "--params", "300", "--dropout", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert "dropout_n32" not in result
    assert result["bytes_ratio_n32"] == result["sizes"]["32"]["bytes_ratio"]
    assert result["targets_met"]["bytes_ratio_n32"] == (result["bytes_ratio_n32"] <= 2.25)
    assert any("bytes_ratio" in line for line in lines[:-1])


def test_model_shapes_sum_to_the_parameter_count() -> None:
    for n in (1, 300, 512, 2_000, 100_000, 123_457):
        assert sum(int(np.prod(s)) for s in secagg.model_shapes(n).values()) == n


def test_a_wrong_sum_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = BucketState.finish

    def off_by_one(self: BucketState, masked: Any) -> Unmasked:
        out = real(self, masked)
        return Unmasked(out.total + 1.0, out.weight, out.num_samples, out.survivors)

    monkeypatch.setattr(BucketState, "finish", off_by_one)
    with pytest.raises(BenchError, match="unmasked sum is off"):
        secagg.run_bucket(4, 300)


def test_bad_options_are_refused() -> None:
    with pytest.raises(BenchError):
        secagg.run(_args("--sizes", "1,8"))
    with pytest.raises(BenchError):
        secagg.run(_args("--sizes", "eight"))
    with pytest.raises(BenchError):
        secagg.run(_args("--dropout", "1.5"))
