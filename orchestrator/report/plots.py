"""The report's PNG plots, drawn with matplotlib's object API on the Agg canvas.

No pyplot: no global figure state, no display, safe in a worker thread. Every plot has a title
and axis labels; a plot without data says "no data" instead of failing. Each PNG carries its
title and a one-line description of what was drawn in its text chunks (``Title``,
``Description``), which is what the tests and curious operators can read back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .data import ReportData, VersionPoint

__all__ = ["PLOTS", "Plot", "render_plots"]

_SIZE_IN = (7.5, 4.5)
_DPI = 100


@dataclass(frozen=True)
class Plot:
    """One PNG: its file name, the caption the summary uses, and how to draw it."""

    filename: str
    caption: str
    draw: Callable[[Axes, ReportData], str]
    """Draws on the axes; returns the description of what was drawn."""


def render_plots(data: ReportData, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write every plot of :data:`PLOTS` into ``out_dir``; returns the paths (blocking: run
    it in a thread from async code)."""
    paths = []
    for plot in PLOTS:
        path = Path(out_dir) / plot.filename
        fig = Figure(figsize=_SIZE_IN, dpi=_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        description = plot.draw(ax, data)
        fig.savefig(path, format="png", metadata={
            "Title": ax.get_title(), "Description": description, "Software": "fedmq report"})
        paths.append(path)
    return paths


# -- the plots ----------------------------------------------------------------------------------


def _accuracy(ax: Axes, data: ReportData) -> str:
    name = data.metric_name
    ax.set_title(f"Validation {name} per model version")
    ax.set_xlabel("model version")
    ax.set_ylabel(name)
    server = _series(data.versions, "metric")
    federated = _series(data.versions, "federated_metric")
    if not server[0] and not federated[0]:
        return _no_data(ax, f"no {name} recorded for any version")
    if server[0]:
        ax.plot(*server, marker="o", label=f"server validation {name}")
    if federated[0]:
        ax.plot(*federated, marker="s", linestyle="--",
                label=f"federated evaluation (sample-weighted {name})")
    attr = "metric" if server[0] else "federated_metric"
    best = data.best(attr, higher_is_better=data.higher_is_better)
    if best is not None:
        value = getattr(best, attr)
        ax.plot([best.version], [value], marker="*", markersize=16, linestyle="none",
                color="goldenrod", label=f"best: {value:.4g} at v{best.version}")
    _mark_stop(ax, data)
    _finish_versions(ax)
    return (f"{len(server[0])} server points, {len(federated[0])} federated points, "
            f"best {attr} v{best.version if best else '-'}")


def _loss(ax: Axes, data: ReportData) -> str:
    ax.set_title("Loss per model version")
    ax.set_xlabel("model version")
    ax.set_ylabel("loss")
    series = [(_series(data.versions, "loss"), "server validation loss", "o", "-"),
              (_series(data.versions, "federated_loss"), "federated evaluation loss", "s", "--"),
              (_series(data.versions, "train_loss"), "mean train loss of applied updates", "^",
               ":")]
    if not any(xs for (xs, _), *_ in series):
        return _no_data(ax, "no loss recorded for any version")
    for (xs, ys), label, marker, style in series:
        if xs:
            ax.plot(xs, ys, marker=marker, linestyle=style, label=label)
    _mark_stop(ax, data)
    _finish_versions(ax)
    return ", ".join(f"{len(xs)} {label} points" for (xs, _), label, *_ in series)


def _staleness(ax: Axes, data: ReportData) -> str:
    ax.set_title("Staleness of applied updates")
    ax.set_xlabel("staleness (versions behind the model it was applied to)")
    ax.set_ylabel("applied updates")
    values = data.staleness
    if not values:
        return _no_data(ax, "no applied updates")
    counts = [0] * (max(values) + 1)
    for s in values:
        counts[s] += 1
    ax.bar(range(len(counts)), counts, width=0.8, color="tab:blue")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    mean = sum(values) / len(values)
    ax.text(0.98, 0.95, f"{len(values)} updates\nmean {mean:.2f}, max {max(values)}",
            transform=ax.transAxes, ha="right", va="top",
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    return f"{len(values)} applied updates, staleness 0..{max(values)}"


def _participation(ax: Axes, data: ReportData) -> str:
    ax.set_title("Participation per device class")
    ax.set_xlabel("device class")
    ax.set_ylabel("applied updates")
    if not data.participation:
        return _no_data(ax, "no applied updates")
    classes = list(data.participation)
    counts = [data.participation[c] for c in classes]
    bars = ax.bar(classes, counts, color="tab:green")
    labels = [f"{data.contributors.get(c, 0)} device"
              f"{'' if data.contributors.get(c, 0) == 1 else 's'}" for c in classes]
    ax.bar_label(bars, labels=labels, padding=2)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(counts) * 1.15)
    return ", ".join(f"{c}: {n}" for c, n in zip(classes, counts, strict=True))


def _per_minute(ax: Axes, data: ReportData) -> str:
    ax.set_title("Updates per minute (by final status)")
    ax.set_ylabel("updates per minute")
    pm = data.per_minute
    if pm is None:
        ax.set_xlabel("minutes since the first update")
        return _no_data(ax, "no updates received")
    start = datetime.fromtimestamp(pm.start_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    ax.set_xlabel(f"minutes since the first update ({start})")
    edges = list(range(len(pm.accepted) + 1))
    ax.stairs(pm.accepted, edges, label="accepted", color="tab:green", linewidth=2)
    ax.stairs(pm.rejected, edges, label="rejected", color="tab:red", linewidth=2)
    if any(pm.quarantined):
        ax.stairs(pm.quarantined, edges, label="quarantined", color="tab:orange", linewidth=2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.legend(loc="best")
    ax.grid(True, alpha=0.3)
    return (f"{len(pm.accepted)} minutes, {sum(pm.accepted)} accepted, {sum(pm.rejected)} "
            f"rejected, {sum(pm.quarantined)} quarantined")


PLOTS: tuple[Plot, ...] = (
    Plot("accuracy.png", "Validation metric per version", _accuracy),
    Plot("loss.png", "Loss per version", _loss),
    Plot("staleness.png", "Staleness of applied updates", _staleness),
    Plot("participation.png", "Applied updates per device class", _participation),
    Plot("updates_per_minute.png", "Updates per minute", _per_minute),
)


# -- helpers ------------------------------------------------------------------------------------


def _series(points: tuple[VersionPoint, ...], attr: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for p in points:
        value = getattr(p, attr)
        if value is not None:
            xs.append(p.version)
            ys.append(float(value))
    return xs, ys


def _mark_stop(ax: Axes, data: ReportData) -> None:
    if data.stop is not None and data.stop.version is not None:
        ax.axvline(data.stop.version, color="grey", linestyle=":",
                   label=f"stopped at v{data.stop.version}")


def _finish_versions(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")


def _no_data(ax: Axes, why: str) -> str:
    ax.text(0.5, 0.5, f"no data\n({why})", transform=ax.transAxes, ha="center", va="center",
            fontsize=14, color="dimgrey")
    ax.set_xticks([])
    ax.set_yticks([])
    return f"no data: {why}"
