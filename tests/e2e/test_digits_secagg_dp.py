"""``fedmq demo --dp --secure``: 20 real agents on ``load_digits`` (non-IID) in secure buckets
of 20 whose members add the noise (distributed DP, z = 1.0, clip 1.0): no trusted server, and
``fedmq privacy report`` charges it as central noise."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from fedmq.demo import prepare_demo, run_demo
from orchestrator.cli import privacy as privacy_cli

pytestmark = pytest.mark.integration  # the demo starts an embedded Mosquitto


@pytest.mark.slow
async def test_distributed_dp_in_secure_buckets_learns_and_is_accounted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    setup = await asyncio.to_thread(prepare_demo, tmp_path / "demo", devices=20, k=20,
                                    target=1.01, max_wall_s=600.0, dp=True, secure=True,
                                    max_versions=60)
    assert setup.config.privacy.mode == "distributed"
    assert setup.config.secure_aggregation.enabled
    progress = io.StringIO()

    result = await run_demo(setup, progress=progress)

    print(f"demo --dp --secure: accuracy {result.final_accuracy} after {result.versions} "
          f"versions ({result.device_updates} device updates), epsilon {result.epsilon}")
    assert result.final_accuracy is not None and result.final_accuracy >= 0.75, \
        progress.getvalue()
    assert result.versions == 60 and result.device_updates >= 60 * 18
    capsys.readouterr()
    code = await asyncio.to_thread(privacy_cli.main, ["report", "--config",
                                                      str(setup.out / "orchestrator.toml"),
                                                      "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["mode"] == "distributed" and report["sampling"] == "none"
    assert report["epsilon"] == pytest.approx(result.epsilon)
    assert len(report["devices"]) == 20
