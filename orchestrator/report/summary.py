"""The report's markdown summary (pure: :class:`ReportData` in, text out)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from .data import ReportData, VersionPoint
from .plots import PLOTS

__all__ = ["SUMMARY_FILE", "summary_markdown"]

SUMMARY_FILE = "summary.md"


def summary_markdown(data: ReportData, images: Sequence[str] | None = None) -> str:
    """The summary; ``images`` are the plot file names to embed (default: every plot),
    relative to the summary's folder."""
    embed = [p for p in PLOTS if images is None or p.filename in images]
    title = f"Federation report: `{data.federation}`" if data.federation else "Federation report"
    out = [f"# {title}", "",
           f"Store `{data.source}`, generated {_when(data.generated_ms)}.", ""]
    out += ["## Model", "", *_model(data), ""]
    out += ["## Stopping", "", _stopping(data), ""]
    out += ["## Updates", "", *_updates(data), ""]
    out += ["## Devices", "", *_devices(data), ""]
    if embed:
        out += ["## Plots", ""]
        for plot in embed:
            out += [f"![{plot.caption}]({plot.filename})", ""]
    return "\n".join(out).rstrip() + "\n"


def _model(data: ReportData) -> list[str]:
    vs = data.versions
    if not vs:
        return ["No model version yet."]
    kinds = {k: sum(1 for v in vs if v.kind == k) for k in ("aggregate", "rollback")}
    latest = vs[-1]
    lines = [f"- Versions: {len(vs)} (v{vs[0].version}–v{latest.version}): "
             f"{kinds['aggregate']} aggregated, {kinds['rollback']} rollbacks; latest "
             f"v{latest.version} made {_when(latest.created_ms)}."]
    name = data.metric_name
    rows = [(f"Validation {name}", "metric", data.higher_is_better),
            ("Validation loss", "loss", False),
            (f"Federated {name}", "federated_metric", data.higher_is_better),
            ("Federated loss", "federated_loss", False)]
    found = False
    for label, attr, higher in rows:
        final, best = data.final(attr), data.best(attr, higher_is_better=higher)
        if final is None or best is None:
            continue
        found = True
        extra = (f" from {final.federated_reports} device reports"
                 if attr.startswith("federated") and final.federated_reports else "")
        lines.append(f"- {label}: final {_num(_get(final, attr))} (v{final.version}{extra}), "
                     f"best {_num(_get(best, attr))} (v{best.version}).")
    if not found:
        lines.append("- No validation or federated evaluation metrics recorded.")
    return lines


def _stopping(data: ReportData) -> str:
    stop = data.stop
    if stop is None:
        return "Not stopped: no stopping rule has fired (or none was recorded)."
    at = f" at v{stop.version}" if stop.version is not None else ""
    when = f" ({_when(stop.ts_ms)})" if stop.ts_ms is not None else ""
    return f"Stopped{at}{when}: {_cell(stop.reason)}."


def _updates(data: ReportData) -> list[str]:
    if not data.received:
        return ["No updates received."]
    o = data.outcomes
    accepted = o.get("applied", 0) + o.get("buffered", 0)
    lines = _table(("outcome", "updates"), [
        ("received", data.received),
        ("accepted", accepted),
        ("accepted, applied to a version", o.get("applied", 0)),
        ("accepted, waiting in the buffer", o.get("buffered", 0)),
        ("rejected", o.get("rejected", 0)),
        ("quarantined", o.get("quarantined", 0)),
    ])
    for status, reasons in (("Rejected", data.rejected_by_reason),
                            ("Quarantined", data.quarantined_by_reason)):
        if reasons:
            lines += ["", f"{status} by reason:", "", *_table(("reason", "updates"),
                                                               reasons.items())]
    if data.staleness:
        s = data.staleness
        lines += ["", f"Staleness of applied updates: mean {sum(s) / len(s):.2f}, "
                      f"max {max(s)} versions."]
    return lines


def _devices(data: ReportData) -> list[str]:
    total = sum(data.devices_by_status.values())
    if not total and not data.participation:
        lines = ["No devices registered."]
    else:
        statuses = ", ".join(f"{n} {s}" for s, n in data.devices_by_status.items())
        lines = [f"- {total} devices ({statuses or 'none registered'})."]
    if data.operators:
        lines.append(f"- {data.operators} operator key{'s' if data.operators != 1 else ''}.")
    classes = sorted(set(data.devices_by_class) | set(data.participation))
    if classes:
        lines += ["", *_table(("device class", "devices", "contributing", "applied updates"), [
            (c, data.devices_by_class.get(c, 0), data.contributors.get(c, 0),
             data.participation.get(c, 0)) for c in classes])]
    return lines


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows]
    return lines


def _cell(text: str) -> str:
    """Table-safe text: a ``|`` would end the cell, a newline the row."""
    return " ".join(text.replace("|", "\\|").split()) if text.strip() else text


def _get(point: VersionPoint, attr: str) -> float:
    value = getattr(point, attr)
    assert isinstance(value, float)
    return value


def _num(value: float) -> str:
    return f"{value:.4g}"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

