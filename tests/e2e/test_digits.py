"""End to end on ``load_digits``: embedded Mosquitto, the real ``Orchestrator`` and 20 real
edge agents (``fedmq.simulate``) in async (FedBuff) mode, data split non-IID with a Dirichlet
alpha of 0.5. The global model, evaluated by the server on the held-out split, must reach 0.90
test accuracy; the stopping rule aims at 0.92 with a wall-clock guard.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fedmq.demo import prepare_demo, run_demo
from orchestrator.store import Store

pytestmark = pytest.mark.integration  # the demo starts an embedded Mosquitto

ACCURACY = 0.90


async def test_twenty_agents_reach_ninety_percent_on_digits(tmp_path: Path) -> None:
    setup = prepare_demo(tmp_path / "e2e", devices=20, k=10, target=0.92, max_wall_s=60.0)
    assert setup.config.aggregation.mode == "async"
    assert len(setup.data.shards) == 20
    progress = io.StringIO()

    result = await run_demo(setup, progress=progress)

    assert result.final_accuracy is not None, progress.getvalue()
    assert result.final_accuracy >= ACCURACY, progress.getvalue()
    assert result.versions >= 1
    assert result.stop_reason.startswith("target_metric"), progress.getvalue()
    # the figure comes from the store: the latest version, evaluated on the held-out split
    async with Store.open(setup.config.federation.store_path) as store:
        latest = await store.latest_version()
        assert latest is not None and latest.version == result.versions
        assert latest.metrics["server_metric"] >= ACCURACY
        applied = await store.ledger(status="applied")
    # every version was made from real agents' updates, from many devices
    assert len({row.sender for row in applied}) >= 10
    print(f"e2e digits: accuracy {result.final_accuracy:.3f} after {result.versions} versions "
          f"in {result.elapsed_s:.1f}s ({result.updates_accepted} updates accepted)")
