"""``fedmq demo --task anomaly`` end to end: embedded Mosquitto, the real ``Orchestrator`` and
20 real edge agents on vibration power spectra in their sensors' own units. The federation
fixes its standardisation from pooled device statistics, trains the built-in autoencoder and
agrees a threshold from noisy score histograms; on new windows of the same machines, a
quarter of them faulty, it must flag >= 90 % of the faults at <= 2 % false positives."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from fedmq.demo import prepare_demo, run_demo

pytestmark = pytest.mark.integration  # the demo starts an embedded Mosquitto


@pytest.mark.slow
async def test_the_agreed_threshold_flags_the_faults_and_spares_the_healthy(
        tmp_path: Path) -> None:
    setup = await asyncio.to_thread(prepare_demo, tmp_path / "demo", task="anomaly",
                                    devices=20)
    assert setup.config.standardize.enabled
    progress = io.StringIO()

    result = await run_demo(setup, progress=progress)

    figures = result.anomaly
    assert figures is not None and figures.threshold is not None, progress.getvalue()
    print(f"demo --task anomaly: detection {figures.detection_rate}, false positives "
          f"{figures.false_positive_rate} at threshold {figures.threshold:.4g} "
          f"(v{figures.threshold_version}) after {result.versions} versions")
    assert figures.detection_rate is not None and figures.detection_rate >= 0.90
    assert figures.false_positive_rate is not None and figures.false_positive_rate <= 0.02
    assert result.final_accuracy is None  # an autoencoder has no accuracy
