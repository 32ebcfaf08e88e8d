"""The ``publish`` task: the latest version goes out retained, at most once per interval.

Versions made while a publication waits are coalesced: the latest one goes out (every device
downloads every publication, so 50 versions a second would be 50 snapshots a second to every
device). The delta goes from what was published last (at start-up: from the latest version's
parent). A stop republishes the same version with ``stopped``; every (re)connect republishes
it too, since the broker may have lost its retained messages; so does a change of its annex
(the anomaly threshold agreed for it, the federation's standardisation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping

from orchestrator.clock import Clock
from orchestrator.link.mqtt import NotConnectedError
from orchestrator.versions.head import VersionHead
from orchestrator.versions.publisher import ModelPublisher, ModelRelease
from schemas.annex import ModelAnnex
from schemas.tensors import Params

__all__ = ["Publication"]

log = logging.getLogger(__name__)


class Publication:
    def __init__(self, publisher: ModelPublisher, *, head: VersionHead,
                 graphs: Mapping[str, bytes], first_base: tuple[int, Params] | None,
                 interval_s: float, clock: Clock, counters: MutableMapping[str, int]) -> None:
        """``first_base``: what the first publication's delta starts from."""
        self._publisher = publisher
        self._head = head
        self._graphs = graphs
        self._interval_s = interval_s
        self._clock = clock
        self._counters = counters
        self._due = head.watch()
        self._republish = True
        self._sent: tuple[int, bool, ModelAnnex] | None = None
        """(version, stopped, annex) of what is retained on the broker now."""
        self._base = first_base
        """The delta base of the last publication (a republication reuses it)."""

    def republish(self) -> None:
        """Publish the current version again (the link reconnected)."""
        self._republish = True
        self._due.set()

    async def run(self) -> None:
        last = float("-inf")
        while True:
            await self._due.wait()
            await self._clock.sleep(max(0.0, last + self._interval_s - self._clock.monotonic()))
            self._due.clear()
            if await self._publish_latest():
                last = self._clock.monotonic()

    async def _publish_latest(self) -> bool:
        model = self._head.current
        stopped = self._head.stopped is not None
        if self._sent == (model.version, stopped, model.annex) and not self._republish:
            return False
        published = self._head.published
        base = published if published is not None and published[0] < model.version \
            else self._base
        republish, self._republish = self._republish, False
        release = ModelRelease(version=model.version, params=model.params, graphs=self._graphs,
                               parent=model.parent, created_ms=model.created_ms,
                               stopped=stopped, base=base, annex=model.annex)
        try:
            await self._publisher.publish(release)
        except NotConnectedError as exc:
            log.info("model v%d not published yet: %s", model.version, exc)
            self._republish = self._republish or republish
            return False  # the next connect triggers it again
        self._base = base
        self._sent = (model.version, stopped, model.annex)
        self._counters["published"] += 1
        await self._head.mark_published(model.version, model.params, model.annex)
        return True
