"""``fedmq demo --dp``: 20 real agents on ``load_digits`` (non-IID) with client-level DP
(noise multiplier 1.0, clip norm 1.0, noise added by the orchestrator to each aggregate) still
reach 0.80 test accuracy, and ``fedmq privacy report`` shows the federation's epsilon."""

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
async def test_the_demo_with_dp_reaches_eighty_percent_and_reports_epsilon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    setup = await asyncio.to_thread(prepare_demo, tmp_path / "demo", devices=20, k=20,
                                    target=0.85, max_wall_s=150.0, dp=True)
    privacy = setup.config.privacy
    assert (privacy.mode, privacy.noise_multiplier, privacy.clip_norm) == ("server", 1.0, 1.0)
    progress = io.StringIO()

    result = await run_demo(setup, progress=progress)

    print(f"demo --dp: accuracy {result.final_accuracy} after {result.versions} versions, "
          f"epsilon {result.epsilon}")
    assert result.final_accuracy is not None and result.final_accuracy >= 0.80, \
        progress.getvalue()
    assert result.epsilon is not None and result.epsilon > 0
    config_path = setup.out / "orchestrator.toml"
    capsys.readouterr()
    code = await asyncio.to_thread(privacy_cli.main,
                                   ["report", "--config", str(config_path), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["enabled"] and report["mode"] == "server"
    assert report["epsilon"] == pytest.approx(result.epsilon)
    assert report["versions_accounted"] == result.versions
    assert len(report["devices"]) == 20
