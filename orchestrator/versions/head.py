"""The version head: the current model version, what is published, whether the federation
stopped, and everyone waiting for one of those to change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from schemas.annex import ModelAnnex
from schemas.tensors import Params

__all__ = ["ModelVersion", "VersionHead"]


@dataclass(frozen=True)
class ModelVersion:
    version: int
    params: Params = field(repr=False)
    arch_hash: str
    created_ms: int
    parent: int | None
    annex: ModelAnnex = field(default_factory=ModelAnnex)
    """Published with it: the input standardisation, the anomaly threshold agreed so far."""


class VersionHead:
    """Only the aggregator advances it; publication records what went out; the stopper
    records a stop. Loops that act on changes :meth:`watch` it."""

    def __init__(self, model: ModelVersion, *, stopped: str | None = None) -> None:
        self._model = model
        self._shapes = {name: tuple(p.shape) for name, p in model.params.items()}
        self._published: tuple[int, Params] | None = None
        self._published_annex = ModelAnnex()
        self._stopped = stopped
        self._changed = asyncio.Condition()
        self._watchers: list[asyncio.Event] = []

    @property
    def current(self) -> ModelVersion:
        return self._model

    @property
    def version(self) -> int:
        return self._model.version

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._shapes

    @property
    def published(self) -> tuple[int, Params] | None:
        """The version last published completely, with its parameters."""
        return self._published

    @property
    def published_annex(self) -> ModelAnnex:
        """The annex of the last complete publication."""
        return self._published_annex

    @property
    def published_version(self) -> int | None:
        return self._published[0] if self._published is not None else None

    @property
    def stopped(self) -> str | None:
        """Why the federation stopped (a stopping rule's reason), or None."""
        return self._stopped

    def watch(self) -> asyncio.Event:
        """An event set on every change (set from the start: act on the current state)."""
        event = asyncio.Event()
        event.set()
        self._watchers.append(event)
        return event

    async def advance(self, model: ModelVersion) -> None:
        self._model = model
        await self._notify()

    async def annotate(self, annex: ModelAnnex) -> None:
        """The current version's annex changed (e.g. its anomaly threshold was agreed)."""
        self._model = replace(self._model, annex=annex)
        await self._notify()

    async def mark_published(self, version: int, params: Params,
                             annex: ModelAnnex | None = None) -> None:
        self._published = (version, params)
        self._published_annex = annex if annex is not None else ModelAnnex()
        await self._notify()

    async def mark_stopped(self, reason: str | None) -> None:
        """The federation stopped for ``reason`` (None: it resumed)."""
        self._stopped = reason
        await self._notify()

    async def wait_until(self, reached: Callable[[VersionHead], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: reached(self))

    async def _notify(self) -> None:
        for event in self._watchers:
            event.set()
        async with self._changed:
            self._changed.notify_all()
