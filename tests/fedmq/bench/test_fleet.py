"""``fedmq bench fleet --quick``: lightweight devices enroll and heartbeat over real MQTT
against an orchestrator process; real agents' updates are all accounted for."""

from __future__ import annotations

import json

import pytest

from fedmq.cli import main as fedmq_main

pytestmark = pytest.mark.integration  # the benchmark starts its own Mosquitto


def test_fleet_quick_reports_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert fedmq_main(["bench", "fleet", "--quick"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("devices", "connected", "heartbeats_per_s", "orchestrator_cpu_pct",
                "status_query_ms", "updates_lost"):
        assert key in result
    assert result["devices"] == 100
    assert 0 < result["connected"] <= result["devices"]
    assert result["enrolled"] == result["devices"]  # every device enrolled with Enroll
    assert result["heartbeats_sent_per_s"] > 0 and result["heartbeats_per_s"] > 0
    assert 0 <= result["orchestrator_cpu_pct"] <= 200  # two cores at most
    assert result["status_query_ms"] > 0
    assert result["updates_built"] == (result["updates_in_ledger"] + result["updates_pending"]
                                       + result["updates_lost"])
    assert result["updates_lost"] == 0
