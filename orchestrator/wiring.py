"""Builds the service's parts from the config and what the :class:`~.service.Orchestrator`
opened (store, key, decode pool, link), each handed its collaborators explicitly, and lists
the loops the owner runs as named tasks. State is restored here, before any loop starts: the
current version, replay windows, the buffer's fill, optimizer moments, stopping progress,
privacy accountant, screening history and the seq counter's limit."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiomqtt
from nacl.signing import SigningKey

from orchestrator.aggregation import OptimizerStateError, ServerOptimizer
from orchestrator.clock import Clock
from orchestrator.config import Config
from orchestrator.convergence.evaluation import (
    EvaluationLoop,
    ServerEvaluator,
    load_validation_set,
)
from orchestrator.convergence.fedeval import FederatedEvaluation
from orchestrator.convergence.resume import ResumeWatch
from orchestrator.convergence.standardize import Standardizer
from orchestrator.convergence.stopper import Stopper
from orchestrator.convergence.stopping import StoppingRules, StoppingState
from orchestrator.convergence.sync_rounds import SyncRounds
from orchestrator.devices.control import ControlLanes, Handler
from orchestrator.devices.enrollment import EnrollHandler
from orchestrator.devices.flood import FloodWatch
from orchestrator.devices.logins import password_file, reload_broker
from orchestrator.devices.passwords import PasswordRotations
from orchestrator.devices.registry import Registry
from orchestrator.devices.replay_book import ReplayBook
from orchestrator.devices.reports import EvalHandler, StatusHandler
from orchestrator.devices.revocation import Revocations
from orchestrator.devices.rotation import RESEND_S, KeyRotationHandler, RotationRequests
from orchestrator.devices.selection import (
    BasicSelection,
    OutstandingTasks,
    selection_from_config,
)
from orchestrator.devices.standing import RegistryWatch, Standing
from orchestrator.devices.tasking import Tasker
from orchestrator.housekeeping import Housekeeping
from orchestrator.ingest.buffer_cache import Buffer
from orchestrator.ingest.decode_pool import DecodePool
from orchestrator.ingest.intake import Intake
from orchestrator.link.keyring import KeySet
from orchestrator.link.mqtt import MqttLink
from orchestrator.link.rates import RateLimiter
from orchestrator.link.rotation import KeyWatch
from orchestrator.link.router import Router
from orchestrator.link.sender import Outbound
from orchestrator.link.seqs import SeqCounter
from orchestrator.metrics.prometheus import Metrics
from orchestrator.ops.desk import OperatorDesk
from orchestrator.ops.views import OperatorViews
from orchestrator.privacy.runtime import PrivacyRuntime
from orchestrator.secagg.coordinator import Coordinator
from orchestrator.secagg.plan import BucketPlan
from orchestrator.store import Store
from orchestrator.store.state_keys import StateKey
from orchestrator.versions.aggregator import Aggregator, Making
from orchestrator.versions.cadence import AsyncCadence, Cadence, SyncCadence
from orchestrator.versions.guard import RobustGuard
from orchestrator.versions.head import VersionHead
from orchestrator.versions.initial import Start, load_start
from orchestrator.versions.publication import Publication
from orchestrator.versions.publisher import ModelPublisher
from orchestrator.versions.rollback import RollbackWatch
from orchestrator.versions.strategies import optimizer_from, strategy_from
from schemas.topics import Topics, UpKind

__all__ = ["Opened", "Parts", "assemble"]

log = logging.getLogger(__name__)

Loop = tuple[str, Callable[[], Coroutine[Any, Any, None]]]


@dataclass(frozen=True)
class Opened:
    """What the owner opened, and the service-wide instruments the parts share."""

    config: Config
    store: Store
    key: SigningKey
    keys: KeySet
    """The key the service signs with and, during a rotation's grace, the retiring one."""
    decoder: DecodePool
    link: MqttLink
    metrics: Metrics
    counters: Counter[str]
    clock: Clock
    rng: random.Random
    tap: Callable[[aiomqtt.Message], None] | None = None


@dataclass(frozen=True)
class Parts:
    head: VersionHead
    buffer: Buffer
    outstanding: OutstandingTasks
    registry: Registry
    keys: KeyWatch
    loops: list[Loop]
    """Name and coroutine function of every loop, to run as named tasks."""


@dataclass(frozen=True)
class _Restored:
    """What a start reads from the store before any loop runs."""

    start: Start
    head: VersionHead
    registry: Registry
    book: ReplayBook
    buffer: Buffer
    privacy: PrivacyRuntime
    guard: RobustGuard
    seqs: SeqCounter
    cadence: Cadence
    optimizer: ServerOptimizer
    stopping: StoppingState


async def _restore(o: Opened) -> _Restored:
    cfg, store = o.config, o.store
    start = await load_start(store, cfg.model, o.clock, standardize=cfg.standardize.enabled)
    state = await store.server_state()
    stopped = json.loads(state[StateKey.STOPPED])["reason"] if StateKey.STOPPED in state \
        else None
    head = VersionHead(start.model, stopped=stopped)
    registry, book, buffer = Registry(store), ReplayBook(store), Buffer(store)
    privacy, seqs = PrivacyRuntime(cfg.privacy, store), SeqCounter(store)
    for part in (registry, book, buffer, privacy):
        await part.load()
    await seqs.start()
    guard = RobustGuard(cfg.robustness)
    guard.load_state(state, isolated={d.device_id for d in registry.all()
                                      if d.status == "isolated"})
    stopping = StoppingState.from_bytes(state[StateKey.STOPPING]) if StateKey.STOPPING in state \
        else StoppingState(o.clock.wall_ms())
    return _Restored(start, head, registry, book, buffer, privacy, guard, seqs,
                     await _cadence(cfg, store, head, o.clock),
                     _optimizer(cfg, state.get(StateKey.OPTIMIZER)), stopping)


async def assemble(o: Opened) -> Parts:
    cfg, store, r = o.config, o.store, await _restore(o)
    topics = Topics(cfg.federation.id)
    outbound = Outbound(o.link, key=o.key, topics=topics, seqs=r.seqs, clock=o.clock,
                        counters=o.counters)
    outstanding = OutstandingTasks()
    selection = selection_from_config(cfg, rng=o.rng, device_ok=r.registry.standing)
    limiter = RateLimiter(cfg.limits, o.clock)
    standing = Standing(registry=r.registry, outstanding=outstanding, selection=selection,
                        reinstated=(r.guard, limiter), outbound=outbound, counters=o.counters)
    floods = await _flood_watch(o, r, limiter, standing)
    revocations = _revocations(o, r.registry, outbound)
    rotations = RotationRequests(store=store, outbound=outbound, registry=r.registry,
                                 resend_s=RESEND_S, clock=o.clock, counters=o.counters)
    passwords = PasswordRotations(store=store, outbound=outbound, registry=r.registry,
                                  passwords=password_file(cfg), reload=lambda: reload_broker(cfg),
                                  grace_s=cfg.federation.password_grace_s, resend_s=RESEND_S,
                                  clock=o.clock, counters=o.counters)
    stopper = Stopper(StoppingRules(cfg.stopping, r.stopping), fed=topics.fed, store=store,
                      head=r.head, registry=r.registry, outbound=outbound, clock=o.clock)
    evaluation = await _evaluation(cfg, r.start.arch.graphs["eval"], r.head, store, stopper,
                                   o.counters)
    aggregate_due = asyncio.Event()
    aggregator = Aggregator(
        Making(strategy_from(cfg, r.optimizer), r.optimizer,
               "fedavg" if cfg.aggregation.mode == "sync" else "fedbuff"),
        store=store, head=r.head, buffer=r.buffer, cadence=r.cadence, guard=r.guard,
        standing=standing, privacy=r.privacy, registry=r.registry, stopper=stopper,
        evaluated=evaluation is not None, due=aggregate_due, metrics=o.metrics,
        counters=o.counters, clock=o.clock)
    buckets = await _buckets(o, r, outbound, outstanding, aggregate_due)
    intake = Intake(
        store=store, registry=r.registry, book=r.book, decoder=o.decoder, head=r.head,
        buffer=r.buffer, outstanding=outstanding, cadence=r.cadence, outbound=outbound,
        aggregate_due=aggregate_due, counters=o.counters, metrics=o.metrics, clock=o.clock,
        group_batches=cfg.ingest.group_batches, queue_batches=cfg.ingest.queue_batches,
        buckets=buckets)
    lanes = _lanes(o, r, outbound, selection, outstanding, revocations, rotations, passwords,
                   buckets)
    views = OperatorViews(config=cfg, store=store, head=r.head, buffer=r.buffer,
                          outstanding=outstanding, metrics=o.metrics, clock=o.clock,
                          stopper=stopper)
    desk = OperatorDesk(views, config=cfg, store=store, head=r.head, registry=r.registry,
                        book=r.book, outbound=outbound, metrics=o.metrics,
                        counters=o.counters, clock=o.clock)
    publication = Publication(
        ModelPublisher(outbound, store, max_message_bytes=cfg.broker.max_message_bytes),
        head=r.head, graphs=r.start.arch.graphs, first_base=r.start.parent,
        interval_s=cfg.aggregation.publish_interval_s, clock=o.clock, counters=o.counters)
    router = Router(topics, updates=intake.submit, control=lanes.submit, ops=desk,
                    limiter=limiter, counters=o.counters, clock=o.clock, tap=o.tap)
    keys = KeyWatch(store=store, keys=o.keys, key_path=cfg.federation.key_path,
                    outbound=outbound, set_unseal=lambda k: o.decoder.set_unseal(k.unseal),
                    republish_model=publication.republish, clock=o.clock, counters=o.counters)

    def connected() -> None:
        keys.republish()
        publication.republish()

    loops: list[Loop] = [
        ("mqtt", lambda: o.link.run(router.route, connected, router.dropped)),
        ("ingest-decode", intake.decode),
        ("ingest-commit", intake.commit),
        ("control", lanes.run),
        ("aggregate", aggregator.run),
        ("publish", publication.run),
        ("registry", RegistryWatch(r.registry, standing, o.clock,
                                   revocations=revocations,
                                   rotations=(rotations, passwords)).run),
        ("rollback", RollbackWatch(store, aggregator.rollback_requested, o.clock).run),
        ("resume", ResumeWatch(store, stopper, o.clock).run),
        ("housekeeping", Housekeeping(outstanding=outstanding, cadence=r.cadence,
                                      buffer=r.buffer, stopper=stopper,
                                      aggregate_due=aggregate_due, counters=o.counters,
                                      clock=o.clock).run),
        ("ops", desk.run),
        ("flood", floods.run),
        ("keys", keys.run),
    ]
    if evaluation is not None:
        loops.append(("evaluate", evaluation.run))
    if r.privacy.enabled:
        loops.append(("privacy", r.privacy.run))
    if buckets is not None:
        loops.append(("secagg", buckets.run))
    return Parts(r.head, r.buffer, outstanding, r.registry, keys, loops)


async def _flood_watch(o: Opened, r: _Restored, limiter: RateLimiter,
                       standing: Standing) -> FloodWatch:
    floods = FloodWatch(limiter, config=o.config, store=o.store, registry=r.registry,
                        standing=standing, counters=o.counters, clock=o.clock)
    await floods.load()
    return floods


def _revocations(o: Opened, registry: Registry, outbound: Outbound) -> Revocations:
    """Control(revoke) to revoked devices, then their broker credential removed."""
    cfg = o.config
    return Revocations(registry=registry, store=o.store, outbound=outbound,
                       passwords=password_file(cfg),
                       reload=lambda: reload_broker(cfg),
                       grace_s=cfg.federation.revoke_grace_s, clock=o.clock,
                       counters=o.counters)


async def _buckets(o: Opened, r: _Restored, outbound: Outbound, outstanding: OutstandingTasks,
                   aggregate_due: asyncio.Event) -> Coordinator | None:
    """The secure-bucket coordinator (None unless ``[secure_aggregation]`` is on), with its
    open buckets restored."""
    cfg = o.config
    secure = cfg.secure_aggregation
    if not secure.enabled:
        return None
    plan = BucketPlan(secure, clip_norm=r.privacy.clip_norm or secure.clip_norm,
                      noise_multiplier=r.privacy.central_noise_multiplier)
    coordinator = Coordinator(config=secure, plan=plan, store=o.store, registry=r.registry,
                              head=r.head, outbound=outbound, buffer=r.buffer,
                              outstanding=outstanding, cadence=r.cadence,
                              aggregate_due=aggregate_due, counters=o.counters, clock=o.clock,
                              rng=o.rng)
    await coordinator.load()
    return coordinator


def _lanes(o: Opened, r: _Restored, outbound: Outbound, selection: BasicSelection,
           outstanding: OutstandingTasks, revocations: Revocations,
           rotations: RotationRequests, passwords: PasswordRotations,
           buckets: Coordinator | None) -> ControlLanes:
    """The control lanes with their enroll, status (tasking), eval and rotate handlers."""
    cfg, fed = o.config, o.config.federation
    fedeval = FederatedEvaluation(cfg.evaluation.federated_every,
                                  cfg.evaluation.federated_devices,
                                  quantile=cfg.anomaly.quantile,
                                  min_samples=cfg.anomaly.min_samples)
    tasker = Tasker(config=cfg, head=r.head, selection=selection, outstanding=outstanding,
                    cadence=r.cadence, fedeval=fedeval, privacy=r.privacy, store=o.store,
                    counters=o.counters, clock=o.clock, rng=o.rng, buckets=buckets)
    handlers: dict[str, Handler] = {
        UpKind.ENROLL.value: EnrollHandler(
            fed=fed.id, manual_approval=fed.enrollment == "manual",
            heartbeat_s=fed.heartbeat_s, store=o.store, registry=r.registry, book=r.book,
            outbound=outbound, counters=o.counters),
        UpKind.STATUS.value: StatusHandler(fed=fed.id, registry=r.registry, book=r.book,
                                           tasker=tasker, outbound=outbound,
                                           counters=o.counters, revocations=revocations,
                                           standardizer=Standardizer(
                                               cfg.standardize, head=r.head, store=o.store,
                                               counters=o.counters)),
        UpKind.EVAL.value: EvalHandler(fed=fed.id, registry=r.registry, book=r.book,
                                       head=r.head, fedeval=fedeval, store=o.store,
                                       counters=o.counters),
        UpKind.ROTATE.value: KeyRotationHandler(fed=fed.id, store=o.store, registry=r.registry,
                                                book=r.book, outbound=outbound,
                                                counters=o.counters, requests=rotations,
                                                passwords=passwords),
    }
    return ControlLanes(handlers, counters=o.counters, queue_size=cfg.ingest.queue_batches)


def _optimizer(cfg: Config, saved: bytes | None) -> ServerOptimizer:
    optimizer = optimizer_from(cfg)
    if saved is not None:
        try:
            optimizer.load_state_dict(saved)
        except OptimizerStateError as exc:
            log.warning("server optimizer state not restored (%s); starting fresh", exc)
    return optimizer


async def _cadence(cfg: Config, store: Store, head: VersionHead, clock: Clock) -> Cadence:
    agg, concurrency = cfg.aggregation, cfg.selection.concurrency
    if agg.mode != "sync":
        return AsyncCadence(agg.k, agg.max_per_version)
    quorum = agg.quorum if agg.quorum is not None else concurrency
    cadence = SyncCadence(SyncRounds(quorum=quorum, concurrency=concurrency,
                                     deadline_s=agg.round_deadline_s))
    buffered = await store.ledger(status="buffered")
    cadence.start(head.version, clock.wall_ms(),
                  [r.base_version for r in buffered if r.base_version is not None])
    return cadence


async def _evaluation(cfg: Config, eval_graph: bytes, head: VersionHead, store: Store,
                      stopper: Stopper, counters: Counter[str]) -> EvaluationLoop | None:
    if cfg.evaluation.dataset is None:
        return None
    data = await asyncio.to_thread(load_validation_set, cfg.evaluation)
    evaluator = await asyncio.to_thread(ServerEvaluator, eval_graph, data)
    return EvaluationLoop(evaluator, head=head, store=store, stopper=stopper,
                          counters=counters)
