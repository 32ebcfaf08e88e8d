"""``fedmq bench async-vs-sync --quick``: both modes run on the same fleet and report."""

from __future__ import annotations

import json

import pytest

from fedmq.cli import main as fedmq_main

pytestmark = pytest.mark.integration  # the benchmark starts its own Mosquitto


def test_async_vs_sync_quick_reports_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert fedmq_main(["bench", "async-vs-sync", "--quick"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("target", "async_s", "sync_s", "speedup", "async_updates", "sync_updates"):
        assert key in result
    assert result["target"] == 0.5
    assert result["async_s"] > 0 and result["sync_s"] > 0
    assert result["speedup"] == pytest.approx(result["sync_s"] / result["async_s"], rel=0.05)
    assert result["async_updates"] > 0 and result["sync_updates"] > 0
    # a run that never reached the target is timed at the cap, never shorter
    for mode in ("async", "sync"):
        if not result[f"{mode}_reached"]:
            assert result[f"{mode}_s"] == 25.0
