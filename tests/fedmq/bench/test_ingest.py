"""The ingest benchmark end to end at tiny sizes: real Mosquitto, the service in a subprocess,
real load-generator processes. No timing thresholds: it checks the report and that no
acknowledged update is missing from the store."""

from __future__ import annotations

import argparse
import json

import pytest

from fedmq.bench import ingest
from fedmq.bench.cli import BENCHMARKS, main

KEYS = ("updates_per_s", "kernel_floor_updates_per_s", "ratio", "lost", "devices", "params",
        "batch_entries", "durability", "max_per_version")


def test_defaults_describe_the_target_setup() -> None:
    parser = argparse.ArgumentParser()
    ingest.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.devices, args.batch_entries, args.durability) == (20, 8, "NORMAL")
    assert args.decode_workers == 2  # the service's default
    assert BENCHMARKS["ingest"] == "fedmq.bench.ingest"


@pytest.mark.integration  # the benchmark starts its own Mosquitto
def test_small_run_stores_every_acknowledged_update(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ingest", "--devices", "3", "--batches", "3", "--batch-entries", "2",
                 "--k", "4", "--kernel-seconds", "0.05", "--decode-workers", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    for key in KEYS:
        assert key in result, key
    assert result["params"] == 100_000
    assert result["devices"] == 3 and result["batch_entries"] == 2
    assert result["updates_accepted"] == 3 * 3 * 2
    assert result["updates_not_accepted"] == 0
    assert result["lost"] == 0
    assert result["versions"] >= 1  # aggregation ran during the benchmark
    assert result["max_per_version"] == 4  # versions of exactly k by default
    assert result["decode_workers"] == 1
    assert result["updates_per_s"] > 0 and result["kernel_floor_updates_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["updates_per_s"] / result["kernel_floor_updates_per_s"], rel=0.01, abs=0.002)
    assert result["targets_met"]["lost"] is True


@pytest.mark.parametrize("argv", [("--devices", "0"), ("--batches", "x"),
                                  ("--durability", "OFF"), ("--decode-workers", "-1")])
def test_bad_arguments_are_rejected(argv: tuple[str, str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ingest", *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
