"""The broker guard (:mod:`tests.support.broker_guard`): a test that starts a Mosquitto without the
``integration`` marker fails at teardown; a marked one, or one that starts none, does not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.broker import MosquittoBroker
from tests.support import broker_guard


@dataclass
class _Item:
    nodeid: str
    config: pytest.Config
    marked: bool

    def get_closest_marker(self, name: str) -> Any:
        return pytest.mark.integration.mark if self.marked and name == "integration" else None


def _teardown_report(item: _Item) -> pytest.TestReport:
    return pytest.TestReport(item.nodeid, (item.nodeid, None, ""), {}, "passed", None,
                             "teardown")


@pytest.mark.integration
async def test_an_unmarked_test_that_starts_a_broker_fails(request: pytest.FixtureRequest,
                                                           tmp_path: Path) -> None:
    unmarked = _Item(f"{request.node.nodeid}[inner]", request.config, marked=False)
    with broker_guard.watching(unmarked):
        async with MosquittoBroker(tmp_path / "broker"):
            pass
    report = _teardown_report(unmarked)
    broker_guard.check(unmarked, report)
    assert report.outcome == "failed"
    assert "started a Mosquitto but is not marked 'integration'" in str(report.longrepr)
    # the same test marked, and a test that started nothing, pass
    for item in (_Item(unmarked.nodeid, request.config, marked=True),
                 _Item(f"{request.node.nodeid}[quiet]", request.config, marked=False)):
        report = _teardown_report(item)
        broker_guard.check(item, report)
        assert report.outcome == "passed", item

