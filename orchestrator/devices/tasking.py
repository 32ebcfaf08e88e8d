"""What to answer a device's heartbeat: a training task, an evaluation task, a deferral, or
nothing.

:func:`decide` is the decision, from the heartbeat and a :class:`FleetView` of the federation
(no I/O; the selection policy keeps its own bookkeeping of who was tasked when).
:class:`Tasker` builds the view, turns the decision into a signed-ready message and records
it (the outstanding task, the round, the federated evaluation, counters, the one audit row of a
spent privacy budget).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Protocol

from orchestrator.clock import Clock
from orchestrator.config import Config
from orchestrator.convergence.fedeval import FederatedEvaluation
from orchestrator.devices.classes import task_settings
from orchestrator.devices.selection import (
    BasicSelection,
    Deferred,
    Outstanding,
    OutstandingTasks,
    Selected,
)
from orchestrator.privacy.runtime import PrivacyRuntime
from orchestrator.store import AuditEvent, Store
from orchestrator.versions.cadence import Cadence
from orchestrator.versions.head import VersionHead
from schemas.errors import Reason
from schemas.messages import AgentState, Defer, Optimizer, Status, Task, TaskAction, Thermal
from schemas.topics import ORCHESTRATOR_SENDER

__all__ = ["DORMANT_RETRY_MS", "NO_MODEL_RETRY_MS", "Answer", "FleetView", "Tasker", "decide"]

NO_MODEL_RETRY_MS = 2000
"""Nothing is published yet (the service just started): ask again soon."""
DORMANT_RETRY_MS = 24 * 3600 * 1000
"""A device with nothing to ask for (the federation stopped, its privacy budget spent) comes
back in a day. Its heartbeats keep flowing meanwhile, and what would change the answer reaches
it sooner: a resume by ``Control``, a new version by the retained model."""
_ASKING = (AgentState.IDLE, AgentState.DEFERRED)


@dataclass(frozen=True, slots=True)
class FleetView:
    """The federation as one heartbeat's answer sees it."""

    stopped: bool
    published: int | None
    budget_left: bool
    """The device may spend more privacy budget."""
    evaluate: bool
    """The published version wants this device to evaluate it (and the device is fit)."""
    outstanding: int
    busy: bool
    version: int
    """What a training task would train on (the published version, or the round's)."""
    standardizing: bool = False
    """The federation waits for its feature standardisation: no training yet."""


@dataclass(frozen=True, slots=True)
class Train:
    version: int


@dataclass(frozen=True, slots=True)
class Evaluate:
    version: int


Answer = Train | Evaluate | Defer | None


def decide(device: str, status: Status, view: FleetView, selection: BasicSelection,
           now_ms: int) -> Answer:
    if status.state not in _ASKING:
        return None  # busy, paused or offline: its heartbeat is not an ask
    if view.stopped:
        return Defer(DORMANT_RETRY_MS, Reason.FEDERATION_STOPPED.value)
    if view.published is None:
        return Defer(NO_MODEL_RETRY_MS, "no_model")
    if not view.budget_left:
        # checked here, not through the selection's budget_left hook: the device is told the
        # protocol reason (budget_exhausted)
        return Defer(DORMANT_RETRY_MS, Reason.BUDGET_EXHAUSTED.value)
    if view.standardizing:
        return Defer(NO_MODEL_RETRY_MS, "standardizing")
    if view.evaluate:
        return Evaluate(view.published)
    decision = selection.decide(device, status, outstanding=view.outstanding, busy=view.busy,
                                now_ms=now_ms)
    if isinstance(decision, Selected):
        return Train(view.version)
    if isinstance(decision, Deferred):
        return Defer(decision.retry_after_ms, decision.reason)
    return None


class Enlister(Protocol):
    """Where a selected device waits for its secure bucket (:mod:`orchestrator.secagg`)."""

    def enlist(self, device: str, task: Task) -> Defer: ...


class Tasker:
    def __init__(self, *, config: Config, head: VersionHead, selection: BasicSelection,
                 outstanding: OutstandingTasks, cadence: Cadence, fedeval: FederatedEvaluation,
                 privacy: PrivacyRuntime, store: Store, counters: MutableMapping[str, int],
                 clock: Clock, rng: random.Random, buckets: Enlister | None = None) -> None:
        self._config = config
        self._head = head
        self._selection = selection
        self._outstanding = outstanding
        self._cadence = cadence
        self._fedeval = fedeval
        self._privacy = privacy
        self._store = store
        self._counters = counters
        self._clock = clock
        self._rng = rng
        self._buckets = buckets
        self._budget_audited: set[str] = set()

    def view(self, device: str, status: Status) -> FleetView:
        published = self._head.published_version
        busy = self._outstanding.busy(device)
        slot = self._cadence.slot(device, outstanding=len(self._outstanding), busy=busy,
                                  published=published if published is not None else -1)
        evaluate = (published is not None and not busy
                    and self._fedeval.wants(device, published)
                    and self._selection.unfit(status) is None)  # evaluation spends battery too
        # until the standardisation went out, a device holds a model without it
        standardizing = (self._head.current.annex.wants_stats
                         or self._head.published_annex.wants_stats)
        return FleetView(stopped=self._head.stopped is not None, published=published,
                         budget_left=self._privacy.budget_left(device), evaluate=evaluate,
                         outstanding=slot.outstanding, busy=slot.busy, version=slot.version,
                         standardizing=standardizing)

    async def answer(self, device: str, status: Status) -> Task | Defer | None:
        if status.state not in _ASKING:
            return None  # not an ask: spare the view its budget and fleet look-ups
        now = self._clock.wall_ms()
        answer = decide(device, status, self.view(device, status), self._selection, now)
        if isinstance(answer, Defer):
            if answer.reason == Reason.BUDGET_EXHAUSTED.value:
                await self._audit_budget(device)
            self._counters[f"deferred.{answer.reason}"] += 1
            return answer
        if isinstance(answer, Evaluate):
            return self._evaluation(device, answer.version, now)
        if isinstance(answer, Train):
            task = self._training(device, status, answer.version, now)
            # with secure aggregation the task goes out with its bucket, once that forms
            return task if self._buckets is None else self._buckets.enlist(device, task)
        return None

    def _task_id(self) -> str:
        return uuid.UUID(int=self._rng.getrandbits(128)).hex[:16]

    def _evaluation(self, device: str, version: int, now: int) -> Task:
        task = Task(task_id=self._task_id(), model_version=version,
                    action=TaskAction.EVALUATE,
                    deadline_ms=now + int(self._config.training.deadline_s * 1000),
                    score_noise=self._config.anomaly.score_noise)
        self._fedeval.on_task(device, task.task_id, version)
        self._counters["tasks.evaluate"] += 1
        return task

    def _training(self, device: str, status: Status, version: int, now: int) -> Task:
        t = self._config.training
        noise = self._privacy.task_noise(t.clip_norm, t.noise_multiplier)
        klass = task_settings(status, self._config.selection, t)
        task = Task(
            task_id=self._task_id(), model_version=version,
            epochs=klass.epochs, batch_size=klass.batch_size, lr=t.lr, mu=t.mu,
            clip_norm=noise.clip_norm, noise_multiplier=noise.noise_multiplier,
            codec=klass.codec, seal=t.seal,
            deadline_ms=now + int(t.deadline_s * 1000), min_battery_pct=t.min_battery_pct,
            max_thermal=Thermal(t.max_thermal),
            # fleet-wide, whatever the device class: its state starts afresh with each task
            optimizer=Optimizer(t.optimizer), momentum=t.momentum, beta1=t.adam_betas[0],
            beta2=t.adam_betas[1], weight_decay=t.weight_decay,
        )
        self._outstanding.add(Outstanding(device, task.task_id, version, task.deadline_ms))
        self._cadence.on_tasked(device)
        self._counters[f"tasks.{klass.device_class}"] += 1
        self._counters["tasks"] += 1
        return task

    async def _audit_budget(self, device: str) -> None:
        """The first refusal of a spent budget is audited; later ones are only counted."""
        if device in self._budget_audited:
            return
        self._budget_audited.add(device)
        await self._store.append_audit(AuditEvent(
            "rejected", ORCHESTRATOR_SENDER, device=device,
            reason=Reason.BUDGET_EXHAUSTED.value,
            detail={"message": "task", "epsilon": self._privacy.spent(device)}))
