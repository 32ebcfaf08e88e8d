"""``fedmq bench flood``: one enrolled device floods a lane while honest agents train, against
an orchestrator process on its own Mosquitto; the flood is contained and the flooder isolated."""

from __future__ import annotations

import json

import pytest

from fedmq.cli import main as fedmq_main

pytestmark = pytest.mark.integration  # the benchmark starts its own Mosquitto


def test_a_status_flood_is_contained_and_reports_every_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["bench", "flood", "--lane", "status", "--messages", "3000", "--agents", "2",
            "--window", "3"]
    assert fedmq_main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("audit_rows_added", "store_growth_bytes", "rss_growth_mb", "honest_rate_ratio",
                "isolated", "lanes"):
        assert key in result
    lane = result["lanes"]["status"]
    assert lane["sent"] > 0
    assert result["isolated"] is True  # over flood_after_refused: isolated and cut off
    assert 0 < result["audit_rows_added"] <= 100  # coalesced, not one row per message
    assert result["store_growth_bytes"] <= 1_000_000
