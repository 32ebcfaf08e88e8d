"""What a report shows, read from the store: :func:`collect` (reads) and :func:`derive` (pure).

Only public store reads are used. Everything the service may or may not have recorded
(server-side validation, federated evaluation, a stop reason) is optional: what is absent is
``None`` or empty, never an error.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.store import AuditRecord, Device, LedgerEntry, Store, VersionInfo

__all__ = [
    "LOSS_KEYS",
    "METRIC_KEYS",
    "MinuteCounts",
    "ReportData",
    "StopInfo",
    "VersionPoint",
    "collect",
    "derive",
]

METRIC_KEYS = ("server_metric", "server_accuracy", "metric", "accuracy", "val_accuracy")
"""Version-metrics keys holding the server-side validation metric, first found wins (the
service writes ``server_*``; the others are accepted from other writers)."""
LOSS_KEYS = ("server_loss", "loss", "val_loss")
_NAME_KEYS = ("server_metric_name", "metric_name")
_FEDERATED_PREFIX = "federated/"
_UNKNOWN_CLASS = "unknown"
_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse", "perplexity")


@dataclass(frozen=True)
class VersionPoint:
    """One model version with the figures recorded for it (``None``: not recorded)."""

    version: int
    kind: str
    created_ms: int
    updates: int
    """Updates applied to make this version."""
    metric: float | None
    """Server-side validation metric."""
    loss: float | None
    federated_metric: float | None
    """Devices' evaluation reports, averaged weighted by their sample counts."""
    federated_loss: float | None
    federated_reports: int
    train_loss: float | None
    """Mean training loss the applied updates reported."""


@dataclass(frozen=True)
class MinuteCounts:
    """Updates per minute by final ledger status, from the first received update on.

    An update accepted at ingest but dropped at aggregation (e.g. too stale by then) counts
    as rejected: the ledger keeps its final status only.
    """

    start_ms: int
    accepted: tuple[int, ...]
    """Buffered or applied."""
    rejected: tuple[int, ...]
    quarantined: tuple[int, ...]


@dataclass(frozen=True)
class StopInfo:
    reason: str
    version: int | None
    ts_ms: int | None


@dataclass(frozen=True)
class ReportData:
    source: str
    federation: str | None
    generated_ms: int
    metric_name: str
    higher_is_better: bool
    versions: tuple[VersionPoint, ...]
    staleness: tuple[int, ...]
    """One value per applied update: the current version when it was applied minus its base."""
    participation: dict[str, int]
    """Applied updates per device class."""
    contributors: dict[str, int]
    """Distinct devices with applied updates, per device class."""
    per_minute: MinuteCounts | None
    outcomes: dict[str, int]
    """Ledger rows per final status (``buffered``, ``applied``, ``rejected``, ``quarantined``)."""
    rejected_by_reason: dict[str, int]
    quarantined_by_reason: dict[str, int]
    devices_by_status: dict[str, int]
    """Devices (role ``device``) per registry status."""
    devices_by_class: dict[str, int]
    operators: int
    stop: StopInfo | None

    @property
    def received(self) -> int:
        return sum(self.outcomes.values())

    def best(self, attr: str, *, higher_is_better: bool) -> VersionPoint | None:
        """The version with the best value of ``attr`` (``metric``, ``loss``...), or None."""
        points = [p for p in self.versions if getattr(p, attr) is not None]
        if not points:
            return None
        sign = 1.0 if higher_is_better else -1.0
        # max() keeps the first of equals: the earliest version reaching the best value
        return max(points, key=lambda p: sign * getattr(p, attr))

    def final(self, attr: str) -> VersionPoint | None:
        """The latest version with a value of ``attr``, or None."""
        points = [p for p in self.versions if getattr(p, attr) is not None]
        return points[-1] if points else None


async def collect(
    store: Store,
    *,
    federation: str | None,
    generated_ms: int,
    higher_is_better: bool | None = None,
) -> ReportData:
    """Read everything a report needs from an open store (reads only).

    ``higher_is_better`` is the metric's direction; ``None`` guesses it from the metric name
    (``accuracy``: higher; anything named like a loss or an error: lower).
    """
    versions = await store.list_versions()
    ledger = await store.ledger()
    devices = await store.list_devices()
    state = await store.server_state()
    stop = _stop_from_state(state)
    if stop is None:
        stop = _stop_from_audit(await store.list_audit(event="stopped", limit=1))
    return derive(source=store.path, federation=federation, generated_ms=generated_ms,
                  versions=versions, ledger=ledger, devices=devices, stop=stop,
                  higher_is_better=higher_is_better)


def derive(
    *,
    source: str,
    federation: str | None,
    generated_ms: int,
    versions: Sequence[VersionInfo],
    ledger: Sequence[LedgerEntry],
    devices: Sequence[Device],
    stop: StopInfo | None,
    higher_is_better: bool | None = None,
) -> ReportData:
    """Turn store rows into report figures (pure)."""
    applied = _applied_figures(versions, ledger, devices)
    points = tuple(_point(v, applied.train_losses.get(v.version, ())) for v in versions)
    name = _metric_name(versions)
    outcomes: Counter[str] = Counter(e.status for e in ledger)
    ranked = applied.participation.most_common()
    return ReportData(
        source=source,
        federation=federation,
        generated_ms=generated_ms,
        metric_name=name,
        higher_is_better=(higher_is_better if higher_is_better is not None
                          else not any(word in name.lower() for word in _LOWER_IS_BETTER)),
        versions=points,
        staleness=tuple(applied.staleness),
        participation=dict(ranked),
        contributors={cls: len(applied.contributors[cls]) for cls, _ in ranked},
        per_minute=_per_minute(ledger),
        outcomes=dict(sorted(outcomes.items())),
        rejected_by_reason=_reasons(ledger, "rejected"),
        quarantined_by_reason=_reasons(ledger, "quarantined"),
        devices_by_status=dict(sorted(Counter(
            d.status for d in devices if d.role == "device").items())),
        devices_by_class=dict(sorted(Counter(
            d.device_class or _UNKNOWN_CLASS for d in devices if d.role == "device").items())),
        operators=sum(1 for d in devices if d.role == "operator"),
        stop=stop,
    )


# -- applied updates ----------------------------------------------------------------------------


@dataclass
class _AppliedFigures:
    """What the applied updates of the ledger add up to."""

    staleness: list[int] = field(default_factory=list)
    participation: Counter[str] = field(default_factory=Counter)
    """Applied updates per device class."""
    contributors: dict[str, set[str]] = field(default_factory=dict)
    """Senders per device class."""
    train_losses: dict[int, list[float]] = field(default_factory=dict)
    """Reported training losses per version they were applied to."""


def _applied_figures(
    versions: Sequence[VersionInfo], ledger: Sequence[LedgerEntry], devices: Sequence[Device]
) -> _AppliedFigures:
    device_class = {d.device_id: d.device_class for d in devices}
    parent = {v.version: v.parent for v in versions}
    recorded = _recorded_staleness(versions)
    out = _AppliedFigures()
    for e in ledger:
        if e.status != "applied" or e.applied_version is None:
            continue
        stale = recorded.get(e.id)
        if stale is None and e.base_version is not None:
            # applied to make v from its parent (v - 1 for an aggregate)
            current = parent.get(e.applied_version)
            stale = (current if current is not None else e.applied_version - 1) - e.base_version
        if stale is not None:
            out.staleness.append(max(0, stale))
        cls = _device_class(e, device_class)
        out.participation[cls] += 1
        out.contributors.setdefault(cls, set()).add(e.sender or "?")
        loss = _number(e.meta.get("train_loss"))
        if loss is not None:
            out.train_losses.setdefault(e.applied_version, []).append(loss)
    return out


def _recorded_staleness(versions: Sequence[VersionInfo]) -> dict[int, int]:
    """The staleness the aggregator recorded per update id in the versions' lineage; updates
    of versions written without it get theirs recomputed from the parent."""
    recorded: dict[int, int] = {}
    for v in versions:
        for uid, value in _mapping(v.lineage.get("staleness")).items():
            number = _number(value)
            if number is not None and str(uid).isdigit():
                recorded[int(uid)] = round(number)
    return recorded


# -- versions -----------------------------------------------------------------------------------


def _point(v: VersionInfo, train_losses: Sequence[float]) -> VersionPoint:
    m = v.metrics
    fed_metric, fed_loss, reports = _federated(m)
    updates = _number(m.get("updates"))
    listed = v.lineage.get("updates")
    return VersionPoint(
        version=v.version,
        kind=v.kind,
        created_ms=v.created_ms,
        updates=(int(updates) if updates is not None
                 else len(listed) if isinstance(listed, list) else 0),
        metric=_first_number(m, METRIC_KEYS),
        loss=_first_number(m, LOSS_KEYS),
        federated_metric=fed_metric,
        federated_loss=fed_loss,
        federated_reports=reports,
        train_loss=(sum(train_losses) / len(train_losses)) if train_losses else None,
    )


def _federated(metrics: Mapping[str, Any]) -> tuple[float | None, float | None, int]:
    """Sample-weighted means of the ``federated/<device>`` reports (or a plain
    ``federated_metric``/``federated_loss`` a writer put there), and how many reports."""
    reports = [r for k, r in metrics.items() if k.startswith(_FEDERATED_PREFIX)
               and isinstance(r, Mapping)]
    if not reports:
        return (_number(metrics.get("federated_metric")), _number(metrics.get("federated_loss")),
                0)
    return _weighted(reports, "metric"), _weighted(reports, "loss"), len(reports)


def _weighted(reports: Iterable[Mapping[str, Any]], key: str) -> float | None:
    values: list[tuple[float, float | None]] = []
    for r in reports:
        value = _number(r.get(key))
        if value is not None:
            n = _number(r.get("samples"))
            values.append((value, n if n is not None and n > 0 else None))
    if not values:
        return None
    if all(n is not None for _, n in values):
        return sum(v * (n or 0.0) for v, n in values) / sum(n or 0.0 for _, n in values)
    # some reports lack a sample count: a plain mean rather than dropping them
    return sum(v for v, _ in values) / len(values)


def _metric_name(versions: Sequence[VersionInfo]) -> str:
    names: Counter[str] = Counter()
    keys: set[str] = set()
    for v in versions:
        keys.update(v.metrics)
        for key in _NAME_KEYS:
            if isinstance(v.metrics.get(key), str) and v.metrics[key]:
                return str(v.metrics[key])
        for k, r in v.metrics.items():
            if k.startswith(_FEDERATED_PREFIX) and isinstance(r, Mapping):
                if isinstance(r.get("metric_name"), str) and r["metric_name"]:
                    names[r["metric_name"]] += 1
    if names:
        return names.most_common(1)[0][0]
    if keys & {"server_accuracy", "accuracy", "val_accuracy"}:
        return "accuracy"
    return "metric"


# -- ledger -------------------------------------------------------------------------------------


def _device_class(e: LedgerEntry, registry: Mapping[str, str | None]) -> str:
    cls = e.meta.get("device_class")
    if isinstance(cls, str) and cls:
        return cls
    return registry.get(e.sender or "") or _UNKNOWN_CLASS


def _per_minute(ledger: Sequence[LedgerEntry]) -> MinuteCounts | None:
    if not ledger:
        return None
    start = min(e.received_ms for e in ledger)
    span = (max(e.received_ms for e in ledger) - start) // 60_000 + 1
    accepted, rejected, quarantined = [0] * span, [0] * span, [0] * span
    for e in ledger:
        minute = (e.received_ms - start) // 60_000
        if e.status in ("buffered", "applied"):
            accepted[minute] += 1
        elif e.status == "rejected":
            rejected[minute] += 1
        else:
            quarantined[minute] += 1
    return MinuteCounts(start, tuple(accepted), tuple(rejected), tuple(quarantined))


def _reasons(ledger: Sequence[LedgerEntry], status: str) -> dict[str, int]:
    counts = Counter(e.reason or "unspecified" for e in ledger if e.status == status)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# -- stop reason --------------------------------------------------------------------------------


def _stop_from_state(state: Mapping[str, bytes]) -> StopInfo | None:
    """The service records ``stopped`` = JSON ``{reason, version, ts_ms}``; a bare
    ``stop_reason`` (text or the same JSON) is read too. Unreadable values are ignored."""
    for key in ("stopped", "stop_reason"):
        raw = state.get(key)
        if raw is None:
            continue
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if isinstance(value, Mapping):
            reason = value.get("reason")
            if isinstance(reason, str) and reason:
                version, ts = _number(value.get("version")), _number(value.get("ts_ms"))
                return StopInfo(reason, None if version is None else int(version),
                                None if ts is None else int(ts))
        elif isinstance(value, str) and value:
            return StopInfo(value, None, None)
    return None


def _stop_from_audit(records: Sequence[AuditRecord]) -> StopInfo | None:
    for r in records:
        if r.reason:
            version = _number(r.detail.get("version"))
            return StopInfo(r.reason, None if version is None else int(version), r.ts_ms)
    return None


# -- helpers ------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite real number, or None (bools, strings, NaN and infinities are not figures)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _first_number(metrics: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    for key in keys:
        value = _number(metrics.get(key))
        if value is not None:
            return value
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
