"""Write a report folder from a store file: the plots, then ``summary.md`` embedding them."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchestratorError
from orchestrator.store import Clock, Store, wall_clock_ms

from .data import ReportData, collect
from .plots import render_plots
from .summary import SUMMARY_FILE, summary_markdown

__all__ = ["ReportError", "ReportResult", "write_report"]


class ReportError(OrchestratorError):
    """The report cannot be made (no store file, output folder not writable); one line."""


@dataclass(frozen=True)
class ReportResult:
    data: ReportData
    summary: Path
    plots: tuple[Path, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return (*self.plots, self.summary)


async def write_report(
    db_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    federation: str | None = None,
    higher_is_better: bool | None = None,
    clock: Clock = wall_clock_ms,
) -> ReportResult:
    """Read the store at ``db_path`` and write the plots and ``summary.md`` into ``out_dir``
    (created if needed; existing report files are replaced).

    The store must exist (it is never created here, nor is another file turned into one) and
    is only read (though one from an older fedmq is migrated, as the orchestrator would).
    ``higher_is_better`` is the metric's direction for "best" (None: guessed from its name).
    Raises :class:`ReportError` for a missing store, a file that is not one or an unwritable
    folder, and :class:`~orchestrator.store.StoreError` for a store that cannot be read.
    """
    db = Path(db_path)
    out = Path(out_dir)
    if not await asyncio.to_thread(db.is_file):
        exists = await asyncio.to_thread(db.exists)
        raise ReportError(f"{db} is not a file" if exists else f"no store at {db}")
    # Store.open would turn any file into a fresh store: make sure this one already is one
    await asyncio.to_thread(_check_store, db)
    try:
        await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {out}: {exc.strerror or exc}") from exc
    async with Store.open(db) as store:
        data = await collect(store, federation=federation, generated_ms=clock(),
                             higher_is_better=higher_is_better)
    try:
        # matplotlib is CPU work and file I/O: off the event loop
        plots = await asyncio.to_thread(render_plots, data, out)
        summary = out / SUMMARY_FILE
        text = summary_markdown(data, [p.name for p in plots])
        await asyncio.to_thread(summary.write_text, text, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    return ReportResult(data, summary, tuple(plots))


def _check_store(db: Path) -> None:
    """Refuse a file that is not a fedmq store, without writing to it."""
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ReportError(f"{db} is not a fedmq store ({exc})") from exc
    if not version:
        raise ReportError(f"{db} is not a fedmq store (no schema)")
