"""``fedmq report``: plots and a markdown summary of a federation, read from its store.

``await write_report(db_path, out_dir)`` writes ``accuracy.png``, ``loss.png``,
``staleness.png``, ``participation.png``, ``updates_per_minute.png`` and ``summary.md``.
:mod:`.data` reads the figures (:func:`collect`, pure :func:`derive`), :mod:`.plots` draws,
:mod:`.summary` writes the markdown.
"""

from .build import ReportError, ReportResult, write_report
from .data import MinuteCounts, ReportData, StopInfo, VersionPoint, collect, derive
from .plots import PLOTS, Plot, render_plots
from .summary import SUMMARY_FILE, summary_markdown

__all__ = [
    "PLOTS",
    "SUMMARY_FILE",
    "MinuteCounts",
    "Plot",
    "ReportData",
    "ReportError",
    "ReportResult",
    "StopInfo",
    "VersionPoint",
    "collect",
    "derive",
    "render_plots",
    "summary_markdown",
    "write_report",
]
