"""Anomaly screening in the running service (``[robustness]`` in the config).

Before each aggregation the service hands the buffered updates to :meth:`RobustGuard.screen`:
updates flagged by :class:`~orchestrator.aggregation.AnomalyScreen` (non-finite, norm or
direction outliers) and those of devices already isolated are quarantined (ledger status
``quarantined`` with the reason, audited, counted on the device), never applied. A device
flagged ``max_flags`` times within ``window_s`` is isolated: device status ``isolated`` in the
store, audited, and reported in :attr:`ScreenReport.isolated` for the service to tell the
device (``Control(isolate)``) and forget its task. Its later updates are rejected at
ingestion with reason ``isolated``; ``fedmq device reinstate`` makes it active again (the
service then calls :meth:`RobustGuard.reinstate`).

Until an aggregate has been applied there is no reference direction, and the screen's fallback
(the coordinate-wise median of the batch) is not enough at start-up: on ``load_digits`` split
non-IID, four sign-flipped updates scaled by 10 among ten pulled the median their way, the
honest updates were flagged and the attackers applied, after which every honest device was
isolated in turn. So the first screened batch primes the reference with its consensus
direction (:func:`consensus_direction`), which needs only an honest majority.

Screening history and flag counts are saved with each version (:meth:`RobustGuard.state`, in
the version's transaction) and restored at start-up.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from orchestrator.aggregation import (
    AnomalyScreen,
    BufferedUpdate,
    IsolationPolicy,
    ScreeningStateError,
    ScreenResult,
)
from orchestrator.aggregation.strategy import Params
from orchestrator.config import RobustnessConfig
from orchestrator.store import AuditEvent, NotFoundError, Store
from orchestrator.store.state_keys import StateKey
from schemas.errors import Reason

__all__ = [
    "RobustGuard",
    "ScreenReport",
    "consensus_direction",
]

log = logging.getLogger(__name__)

_ACTOR = "screening"

@dataclass(frozen=True)
class ScreenReport:
    kept: list[BufferedUpdate]
    """The updates to aggregate, in buffer order."""
    quarantined: dict[int, str] = field(default_factory=dict)
    """Update id -> reason, already quarantined in the store."""
    isolated: dict[str, str] = field(default_factory=dict)
    """Devices isolated by this screening (committed to the store), with the reason."""
    results: list[ScreenResult] = field(default_factory=list)


class RobustGuard:
    """Screening, quarantine and isolation state of one running service."""

    def __init__(self, config: RobustnessConfig) -> None:
        self._config = config
        # one observed direction suffices: the first is the batch consensus (see above)
        self._screen = AnomalyScreen(z_threshold=config.z_threshold,
                                     min_cosine=config.min_cosine, min_aggregates=1)
        self._isolation = IsolationPolicy(max_flags=config.max_flags,
                                          window_ms=int(config.window_s * 1000))

    @property
    def enabled(self) -> bool:
        return self._config.screening

    @property
    def isolation(self) -> IsolationPolicy:
        return self._isolation

    def load_state(self, state: Mapping[str, bytes], *, isolated: Collection[str]) -> None:
        """Restore saved history and flags; ``isolated`` (the store's isolated devices) wins
        over the saved flags, so a reinstatement made while the service was down holds."""
        try:
            if StateKey.SCREEN in state:
                self._screen.load_state_dict(state[StateKey.SCREEN])
            if StateKey.ISOLATION in state:
                self._isolation.load_state_dict(state[StateKey.ISOLATION])
        except ScreeningStateError as exc:
            log.warning("screening state not restored (%s); starting fresh", exc)
        for device in self._isolation.isolated - set(isolated):
            self._isolation.reinstate(device)

    def state(self) -> dict[str, bytes]:
        """Server-state entries to commit with the next version."""
        if not self.enabled:
            return {}
        return {StateKey.SCREEN: self._screen.state_dict(),
                StateKey.ISOLATION: self._isolation.state_dict()}

    def observe(self, delta: Mapping[str, np.ndarray] | None) -> None:
        """Fold an applied aggregate into the reference direction."""
        if self.enabled and delta is not None:
            self._screen.observe_aggregate(delta)

    def reinstate(self, device: str) -> None:
        self._isolation.reinstate(device)

    def _judge(self, entries: Sequence[BufferedUpdate]) -> list[ScreenResult]:
        if self._screen.aggregates_seen == 0:
            consensus = consensus_direction([(e.sender, e.delta) for e in entries])
            if consensus is not None:
                self._screen.observe_aggregate(consensus)
        return self._screen.screen_batch(entries)

    async def screen(
        self,
        store: Store,
        entries: Sequence[BufferedUpdate],
        *,
        now_ms: int,
        isolated: Collection[str],
    ) -> ScreenReport:
        """Judge ``entries`` (in a thread), quarantine the flagged ones and those of
        ``isolated`` devices, isolate repeat offenders; returns what is left to aggregate."""
        if not self.enabled or not entries:
            return ScreenReport(list(entries))
        self._isolation.prune(now_ms)  # flags that left the window need not be saved again
        blocked = {e.update_id for e in entries if e.sender in isolated}
        judged = [e for e in entries if e.update_id not in blocked]
        results = await asyncio.to_thread(self._judge, judged) if judged else []
        quarantined = {uid: Reason.ISOLATED.value for uid in blocked}
        offenders: dict[str, str] = {}
        for r in results:
            if not r.flagged:
                continue
            assert r.reason is not None
            log.info("update %d from %s flagged: %s (norm %.3g, z %s, cosine %s)", r.update_id,
                     r.sender, r.reason, r.norm, _fmt(r.z_score), _fmt(r.cosine))
            quarantined[r.update_id] = r.reason
            if self._isolation.record_flag(r.sender, now_ms):
                offenders[r.sender] = r.reason
        # an offender's other updates of this batch go with it
        for e in judged:
            if e.sender in offenders and e.update_id not in quarantined:
                quarantined[e.update_id] = Reason.ISOLATED.value
        by_reason: dict[str, list[int]] = {}
        for uid, reason in quarantined.items():
            by_reason.setdefault(reason, []).append(uid)
        for reason, ids in by_reason.items():
            await store.mark_updates(ids, "quarantined", reason, actor=_ACTOR)
        newly: dict[str, str] = {}
        for device, reason in offenders.items():
            flags = self._isolation.flags(device)
            try:
                await store.set_status(device, "isolated", audit=AuditEvent(
                    "isolated", _ACTOR, device=device, reason=reason,
                    detail={"flags": len(flags), "window_s": self._config.window_s}))
            except NotFoundError:  # deleted meanwhile: nobody left to isolate
                continue
            log.warning("device %s isolated after %d flags (last: %s)", device, len(flags),
                        reason)
            newly[device] = reason
        kept = [e for e in entries if e.update_id not in quarantined]
        return ScreenReport(kept, quarantined, newly, results)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def consensus_direction(
    updates: Sequence[tuple[str, Mapping[str, np.ndarray]]],
) -> Params | None:
    """The mean unit direction of the batch's most agreeable half of senders: each sender
    (one vote, its updates' mean unit direction) scores the median cosine to the others, and
    the best-scoring ``ceil(n / 2)`` are averaged. Honest updates agree with each other more
    than with attackers; with an honest majority of senders the honest scores are the
    highest. None with fewer than three senders with finite, non-zero updates."""
    names = sorted(updates[0][1]) if updates else []
    by_sender: dict[str, list[np.ndarray]] = {}
    for sender, d in updates:
        if sorted(d) != names:
            return None  # mixed architectures: no consensus to speak of
        flat = np.concatenate([np.asarray(d[k], np.float64).ravel() for k in names])
        norm = float(np.linalg.norm(flat))
        if math.isfinite(norm) and norm > 0:
            by_sender.setdefault(sender, []).append(flat / norm)
    rows = []
    for vectors in by_sender.values():
        mean = np.mean(vectors, axis=0)
        norm = float(np.linalg.norm(mean))
        if norm > 0:
            rows.append(mean / norm)
    if len(rows) < 3:
        return None
    units = np.stack(rows)
    cosines = units @ units.T
    np.fill_diagonal(cosines, np.nan)
    scores = np.nanmedian(cosines, axis=1)
    best = np.argsort(-scores)[: math.ceil(len(rows) / 2)]
    mean = units[best].mean(axis=0)
    out: Params = {}
    offset = 0
    for k in names:
        shape = np.shape(updates[0][1][k])
        size = int(np.prod(shape))
        out[k] = mean[offset: offset + size].reshape(shape)
        offset += size
    return out
