"""The operator's fleet rows (pure): online rule, staleness, totals, filters and sorting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.ops.fleet_summary import (
    DEVICE_FIELDS,
    device_row,
    fleet_rows,
    fleet_totals,
    select_rows,
)
from orchestrator.store import Device

NOW = 1_000_000


def device(device_id: str, *, status: str = "active", seen: int | None = NOW - 1000,
           last: dict[str, Any] | bytes | None = None, role: str = "device") -> Device:
    raw = last if isinstance(last, bytes) or last is None else json.dumps(last).encode()
    return Device(device_id, role, status, None, b"k" * 32, 0, 0, seen, raw,  # type: ignore[arg-type]
                  None, 0, 2, 1)


def test_online_needs_an_active_device_with_a_recent_non_offline_heartbeat() -> None:
    def online(d: Device) -> bool:
        return bool(device_row(d, now_ms=NOW, current_version=5, heartbeat_s=10)["online"])

    assert online(device("a", last={"state": "idle"}))
    assert not online(device("b", last={"state": "offline"}))
    assert not online(device("c", last={"state": "idle"}, seen=NOW - 30_001))  # 3 periods
    assert online(device("c", last={"state": "idle"}, seen=NOW - 30_000))
    assert not online(device("d", status="revoked", last={"state": "idle"}))
    assert not online(device("e", last=None, seen=None))


def test_rows_read_the_heartbeat_defensively() -> None:
    row = device_row(device("a", last={"state": "training", "battery_pct": 55, "charging": True,
                                       "model_version": 3, "outbox_len": 4}),
                     now_ms=NOW, current_version=5, heartbeat_s=10, device_class="gw",
                     privacy_epsilon=0.5)
    assert list(row) == list(DEVICE_FIELDS)
    assert (row["battery_pct"], row["staleness"], row["outbox_len"]) == (55.0, 2, 4)
    assert (row["class"], row["privacy_epsilon"], row["rejected"]) == ("gw", 0.5, 1)
    junk = device_row(device("b", last=b"\xff not json"), now_ms=NOW, current_version=5,
                      heartbeat_s=10)
    assert (junk["state"], junk["model_version"], junk["outbox_len"]) == (None, None, 0)
    odd = device_row(device("c", last={"state": "idle", "model_version": True,
                                       "battery_pct": "full", "outbox_len": -0.5}),
                     now_ms=NOW, current_version=5, heartbeat_s=10)
    assert (odd["model_version"], odd["battery_pct"], odd["outbox_len"]) == (None, None, 0)
    forged = device_row(device("d", last={"state": "idle", "scored": "many", "anomalies": -4}),
                        now_ms=NOW, current_version=5, heartbeat_s=10)
    assert (forged["scored"], forged["anomalies"]) == (0, 0)


def test_totals_filters_and_sorting() -> None:
    rows = fleet_rows([
        device("c", last={"state": "idle", "battery_pct": 20.0, "model_version": 5,
                          "outbox_len": 1, "scored": 40, "anomalies": 3}),
        device("a", last={"state": "training", "battery_pct": 80.0, "model_version": 3}),
        device("b", last={"state": "offline", "outbox_len": 6}),
        device("ops", role="operator", last={"state": "idle"}),
    ], now_ms=NOW, current_version=5, heartbeat_s=10, classes={"a": "gw", "c": "sensor"})
    assert [r["device_id"] for r in rows] == ["a", "b", "c"]
    totals = fleet_totals(rows)
    assert totals.to_dict() == {"devices": 3, "online": 2, "outbox_backlog": 7,
                                "by_state": {"idle": 1, "offline": 1, "training": 1},
                                "anomalies": 3}
    assert [(r["scored"], r["anomalies"]) for r in rows] == [(0, 0), (0, 0), (40, 3)]

    def ids(**kw: Any) -> list[str]:
        return [r["device_id"] for r in select_rows(rows, **kw)]

    assert ids(offline=True) == ["b"]
    assert ids(stale=True) == ["a", "b"]
    assert ids(device_class="gw") == ["a"]
    assert ids(sort="battery_pct") == ["c", "a", "b"]  # unknown last
    assert ids(sort="battery_pct", descending=True) == ["a", "c", "b"]
    assert ids(sort="outbox_len", descending=True) == ["b", "c", "a"]
    with pytest.raises(ValueError, match="cannot sort by 'colour'"):
        select_rows(rows, sort="colour")
