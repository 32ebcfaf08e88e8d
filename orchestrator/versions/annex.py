"""Changing the current version's annex: recorded in the store first, so that a restart
publishes it again, then in the version head, whose watchers republish it."""

from __future__ import annotations

from typing import Any

from orchestrator.store import Store
from orchestrator.versions.head import VersionHead
from schemas.annex import ModelAnnex, annex_to_record

__all__ = ["record_annex"]


async def record_annex(store: Store, head: VersionHead, annex: ModelAnnex,
                       **metrics: Any) -> None:
    """``annex`` becomes the current version's (``metrics`` are recorded with it)."""
    await store.set_version_metrics(head.version, {"annex": annex_to_record(annex), **metrics})
    await head.annotate(annex)
