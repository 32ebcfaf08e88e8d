"""The fleet view operators see: one JSON-able row per device, filters and sorting (pure).

The service builds the rows from the registry rows and their latest heartbeats (for the
retained ``fl/{fed}/fleet`` summary and the ``fleet.status`` operator command); ``fedmq fleet``
filters and sorts them on the operator's side with :func:`select_rows`.

A device is *online* when its latest heartbeat is not the offline Last Will and arrived within
:data:`ONLINE_HEARTBEATS` heartbeat periods (a device that lost power without the broker
noticing yet goes offline here too). Its *staleness* is how many versions its model is behind
the current one (None when it never reported a model).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.store import Device
from schemas.messages import AgentState

__all__ = [
    "DEVICE_FIELDS",
    "ONLINE_HEARTBEATS",
    "SORT_FIELDS",
    "FleetTotals",
    "device_row",
    "fleet_rows",
    "fleet_totals",
    "select_rows",
]

ONLINE_HEARTBEATS = 3.0
"""Heartbeat periods without news after which a device counts as offline."""

DEVICE_FIELDS = (
    "device_id", "class", "status", "online", "state", "last_seen_ms", "battery_pct",
    "charging", "thermal", "model_version", "staleness", "outbox_len", "accepted", "rejected",
    "quarantined", "isolated", "privacy_epsilon", "scored", "anomalies",
)
"""The keys of every device row, in display order."""

SORT_FIELDS = DEVICE_FIELDS


def _last_status(device: Device) -> dict[str, Any]:
    if not device.last_status:
        return {}
    try:
        value = json.loads(device.last_status)
    except (ValueError, UnicodeDecodeError):
        return {}  # a row written by an older service: show the registry fields only
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return max(0, value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def device_row(
    device: Device,
    *,
    now_ms: int,
    current_version: int,
    heartbeat_s: float,
    device_class: str | None = None,
    privacy_epsilon: float | None = None,
) -> dict[str, Any]:
    """One device as the operator sees it (keys: :data:`DEVICE_FIELDS`)."""
    status = _last_status(device)
    state = status.get("state") if isinstance(status.get("state"), str) else None
    seen = device.last_seen_ms
    recent = seen is not None and now_ms - seen <= ONLINE_HEARTBEATS * heartbeat_s * 1000
    online = (device.status == "active" and recent and state is not None
              and state != AgentState.OFFLINE.value)
    model = status.get("model_version")
    model_version = model if isinstance(model, int) and not isinstance(model, bool) else None
    outbox = status.get("outbox_len")
    return {
        "device_id": device.device_id,
        "class": device.device_class or device_class,
        "status": device.status,
        "online": online,
        "state": state,
        "last_seen_ms": seen,
        "battery_pct": _number(status.get("battery_pct")),
        "charging": bool(status.get("charging", False)),
        "thermal": status.get("thermal") if isinstance(status.get("thermal"), str) else None,
        "model_version": model_version,
        "staleness": (max(0, current_version - model_version)
                      if model_version is not None else None),
        "outbox_len": _count(outbox),
        "accepted": device.accepted_count,
        "rejected": device.rejected_count,
        "quarantined": device.quarantine_count,
        "isolated": device.status == "isolated",
        "privacy_epsilon": privacy_epsilon,
        "scored": _count(status.get("scored")),
        "anomalies": _count(status.get("anomalies")),
    }


def fleet_rows(
    devices: Iterable[Device],
    *,
    now_ms: int,
    current_version: int,
    heartbeat_s: float,
    classes: Mapping[str, str] | None = None,
    privacy: Mapping[str, float | None] | None = None,
) -> list[dict[str, Any]]:
    """Rows for every device-role registry entry, by id (operators are not listed)."""
    classes = classes or {}
    privacy = privacy or {}
    return [
        device_row(d, now_ms=now_ms, current_version=current_version, heartbeat_s=heartbeat_s,
                   device_class=classes.get(d.device_id),
                   privacy_epsilon=privacy.get(d.device_id))
        for d in sorted(devices, key=lambda d: d.device_id) if d.role == "device"
    ]


@dataclass(frozen=True)
class FleetTotals:
    devices: int
    online: int
    by_state: dict[str, int]
    """Online devices by their reported agent state; offline ones count as ``offline``."""
    outbox_backlog: int
    """The sum of the online devices' reported outbox lengths."""
    anomalies: int = 0
    """The sum of the devices' reported anomaly counts (since each started)."""

    def to_dict(self) -> dict[str, Any]:
        return {"devices": self.devices, "online": self.online, "by_state": self.by_state,
                "outbox_backlog": self.outbox_backlog, "anomalies": self.anomalies}


def fleet_totals(rows: Sequence[Mapping[str, Any]]) -> FleetTotals:
    states: Counter[str] = Counter()
    backlog = 0
    for row in rows:
        if row["online"]:
            states[row["state"]] += 1
        elif row["status"] == "active":
            states[AgentState.OFFLINE.value] += 1
        # an offline device's outbox is still waiting: count what it last reported
        backlog += int(row["outbox_len"])
    return FleetTotals(devices=len(rows), online=sum(1 for r in rows if r["online"]),
                       by_state=dict(sorted(states.items())), outbox_backlog=backlog,
                       anomalies=sum(int(r["anomalies"]) for r in rows))


def select_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    offline: bool = False,
    stale: bool = False,
    device_class: str | None = None,
    sort: str = "device_id",
    descending: bool = False,
) -> list[dict[str, Any]]:
    """Filter (every given filter must hold) and sort the rows.

    ``offline``: devices not online; ``stale``: devices whose model is behind the current
    version or unknown; ``device_class``: that class only. Missing values sort last.
    """
    if sort not in SORT_FIELDS:
        raise ValueError(f"cannot sort by {sort!r} (fields: {', '.join(SORT_FIELDS)})")
    out = [dict(r) for r in rows
           if (not offline or not r["online"])
           and (not stale or r["staleness"] is None or r["staleness"] > 0)
           and (device_class is None or r["class"] == device_class)]
    present = [r for r in out if r.get(sort) is not None]
    missing = [r for r in out if r.get(sort) is None]
    present.sort(key=lambda r: (r[sort], r["device_id"]), reverse=descending)
    return present + missing
