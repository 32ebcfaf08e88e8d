"""The orchestrator service: one async context manager owning the store, the MQTT session and
(when embedded) the broker, with its loops as named tasks in one TaskGroup.

    async with Orchestrator(config) as orch:   # connected and subscribed on entry
        await orch.wait_for_version(1, published=True)
    # or, for a process: await orch.wait_closed() until the shutdown event is set

Tasks: ``mqtt`` (receive loop; routes messages), ``ingest-decode`` (groups queued update
batches and judges them in a worker thread), ``ingest-commit`` (one store transaction per
group, then the acks), ``control`` (enroll, status, eval), ``aggregate``, ``publish``,
``evaluate`` (if configured), ``registry`` (picks up other processes' device changes) and
``housekeeping`` (straggler and round deadlines, wall-clock stopping rule, rollback
requests from ``fedmq model rollback``, applied by ``aggregate``). One shutdown path:
setting the shutdown event (injectable) unwinds the TaskGroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiomqtt
import numpy as np
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from orchestrator.aggregation import (
    AggregateResult,
    BufferedUpdate,
    FedAvg,
    FedBuff,
    OptimizerStateError,
    ServerOptimizer,
    optimizer_from_config,
    staleness_from_config,
)
from orchestrator.broker import ORCHESTRATOR_USER, MosquittoBroker
from orchestrator.broker.embedded import embedded_broker
from orchestrator.config import Config
from orchestrator.convergence.drift import drift_signals
from orchestrator.convergence.evaluation import ServerEvaluator, load_validation_set
from orchestrator.convergence.fedeval import FederatedEvaluation
from orchestrator.convergence.stopping import StoppingRules, StoppingState
from orchestrator.convergence.sync_rounds import SyncRounds
from orchestrator.devices.classes import task_settings
from orchestrator.devices.enrollment import judge_enroll
from orchestrator.devices.registry import Registry
from orchestrator.devices.selection import (
    Deferred,
    Outstanding,
    OutstandingTasks,
    selection_from_config,
)
from orchestrator.ingest.buffer_cache import BufferCache, load_buffer
from orchestrator.ingest.decode_pool import DecodePool
from orchestrator.ingest.pipeline import (
    Accept,
    GroupResult,
    IngestPolicy,
    ModelView,
    RawBatch,
    Reject,
    SenderView,
    incoming_rows,
)
from orchestrator.link.keys import load_or_create_key
from orchestrator.link.mqtt import MqttLink, MqttSettings, NotConnected
from orchestrator.link.seqs import SeqCounter
from orchestrator.metrics.counters import MeteredCounter, observe_group
from orchestrator.metrics.prometheus import Metrics, MetricsEndpoint, MetricsServerError
from orchestrator.models.architecture import (
    Architecture,
    initial_model,
    pack_architecture,
    unpack_architecture,
)
from orchestrator.ops.desk import OperatorDesk
from orchestrator.privacy.runtime import PrivacyRuntime
from orchestrator.store import AuditEvent, Store, wall_clock_ms
from orchestrator.versions.guard import RobustGuard
from orchestrator.versions.publisher import ORCHESTRATOR_SENDER, ModelPublisher, ModelRelease
from orchestrator.versions.rollback import RollbackError, apply_rollback, pending_rollback
from schemas.envelope import (
    Opened,
    check_header,
    decode_body,
    open_enroll,
    pack,
    unseal_key,
    verify,
)
from schemas.errors import FedmqError, Reason
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.messages import (
    Ack,
    AgentState,
    Control,
    ControlAction,
    Defer,
    Enrolled,
    EnrollStatus,
    EvalReport,
    Message,
    Status,
    Task,
    TaskAction,
    Thermal,
)
from schemas.replay import ReplayWindow, Verdict
from schemas.signing import key_id
from schemas.tensors import Params
from schemas.topics import DownKind, Topics, UpKind, parse_topic

__all__ = ["Orchestrator", "OrchestratorError"]

log = logging.getLogger(__name__)

# server-state keys
_SEQ_LIMIT = "orchestrator_seq_limit"
_CHUNKS = "published_chunks"
_OPTIMIZER = "optimizer"
_STOPPING = "stopping"
_STOPPED = "stopped"

_HOUSEKEEPING_S = 0.25
_REGISTRY_POLL_S = 1.0
_NO_MODEL_RETRY_MS = 2000
_ROLLBACK_POLL_S = 1.0


class OrchestratorError(Exception):
    """The service cannot start or had to stop; the message is one line."""


class _ShutdownRequested(Exception):
    """Unwinds the TaskGroup when the shutdown event is set."""


@dataclass(frozen=True)
class _Model:
    version: int
    params: Params = field(repr=False)
    arch_hash: str
    created_ms: int
    parent: int | None


_LANES = 8
"""Control messages handled at once (see ``Orchestrator._control_loop``)."""


@dataclass
class _Control:
    device: str
    kind: str
    payload: bytes
    received_ms: int


class Orchestrator:
    """The service. See the module docstring for the tasks it runs.

    Args:
        config: a validated :class:`~orchestrator.config.Config`.
        shutdown: set it to stop the service (default: a private event; see
            :meth:`request_shutdown`).
        clock: milliseconds since the epoch (tests freeze or shift it).
        rng: randomness for task ids' jitter and backoff (tests seed it).
        store_synchronous: SQLite durability, overriding ``ingest.synchronous`` (``FULL``:
            fsync every commit; ``NORMAL``: survives a process crash only; see the store).
    """

    def __init__(
        self,
        config: Config,
        *,
        shutdown: asyncio.Event | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        rng: random.Random | None = None,
        store_synchronous: Literal["FULL", "NORMAL"] | None = None,
    ) -> None:
        self.config = config
        self._shutdown = shutdown if shutdown is not None else asyncio.Event()
        self._clock = clock
        self._rng = rng or random.Random()
        self._synchronous: Literal["FULL", "NORMAL"] = (
            store_synchronous if store_synchronous is not None
            else "NORMAL" if config.ingest.synchronous == "NORMAL" else "FULL")
        self._topics = Topics(config.federation.id)
        self._stack = contextlib.AsyncExitStack()
        self._runner: asyncio.Task[None] | None = None
        self._entered = False
        self.metrics = Metrics(federation=config.federation.id)
        """Prometheus metrics, fed through ``counters`` (see orchestrator.metrics.counters)."""
        self.metrics_endpoint: MetricsEndpoint | None = None
        """Where ``GET /metrics`` is served (``[metrics] port`` set), else None."""
        self.counters: Counter[str] = MeteredCounter(self.metrics)
        """Ingestion and protocol counters (``accepted``, ``duplicate``, ``rejected.<reason>``,
        ``versions``, ...)."""
        # set in __aenter__
        self._store: Store | None = None
        self._broker: MosquittoBroker | None = None
        self._link: MqttLink | None = None
        self._registry: Registry | None = None
        self._publisher: ModelPublisher | None = None
        self._seqs: SeqCounter | None = None
        self._model: _Model | None = None
        self._arch: Architecture | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._evaluator: ServerEvaluator | None = None
        self._stopping: StoppingRules | None = None
        self._ops: OperatorDesk  # operator requests and the fleet summary (orchestrator.ops.desk)
        # ingestion state: replay windows as committed to the store, and as judged so far
        self._committed: dict[str, ReplayWindow] = {}
        self._pending: dict[str, ReplayWindow] = {}
        self._windows_lock = asyncio.Lock()
        self._updates: asyncio.Queue[RawBatch] = asyncio.Queue(config.ingest.queue_batches)
        self._control: asyncio.Queue[_Control] = asyncio.Queue(config.ingest.queue_batches)
        self._judged: asyncio.Queue[GroupResult] = asyncio.Queue(2)
        self._buffer_cache = BufferCache()  # blobs of buffered updates
        self._decoder: DecodePool | None = None
        self._buffered = 0
        # aggregation, publication, evaluation
        agg = config.aggregation
        self._optimizer = _optimizer(config)
        self._fedbuff = FedBuff(
            k=agg.k, staleness_fn=_staleness(config), max_staleness=agg.max_staleness,
            reducer=agg.reducer,  # type: ignore[arg-type]  # validated by the config schema
            trim_fraction=agg.trim_fraction, clip_norm=agg.clip_norm, optimizer=self._optimizer,
        )
        self._fedavg = FedAvg(optimizer=self._optimizer, clip_norm=agg.clip_norm)
        self._rounds: SyncRounds | None = None
        if agg.mode == "sync":
            quorum = agg.quorum if agg.quorum is not None else config.selection.concurrency
            self._rounds = SyncRounds(quorum=quorum, concurrency=config.selection.concurrency,
                                      deadline_s=agg.round_deadline_s)
        self._aggregate_now = asyncio.Event()
        self._publish_now = asyncio.Event()
        self._evaluate_now = asyncio.Event()
        self._republish = True
        self._published: tuple[int, Params] | None = None
        self._published_event = asyncio.Condition()
        self._evaluated: int | None = None
        self._stopped: str | None = None
        self._stopped_event = asyncio.Event()
        # selection
        self._outstanding = OutstandingTasks()
        self._selection = selection_from_config(config, rng=self._rng,
                                                device_ok=self._device_standing)
        self._fedeval = FederatedEvaluation(config.evaluation.federated_every,
                                            config.evaluation.federated_devices)
        self._rollback_polled = float("-inf")
        self._rollback_due = False
        self._ingest_policy = IngestPolicy(
            fed=config.federation.id,
            limits=Limits(
                max_envelope_bytes=max(DEFAULT_LIMITS.max_envelope_bytes,
                                       config.ingest.max_update_bytes),
                max_body_bytes=config.ingest.max_body_bytes,
            ),
            max_update_bytes=config.ingest.max_update_bytes,
            max_staleness=agg.max_staleness,
            max_update_norm=agg.max_update_norm,
        )
        self._key: SigningKey  # set in __aenter__
        self._unseal: PrivateKey
        self._first_base: tuple[int, Params] | None = None
        """What the first publication's delta starts from (the latest version's parent)."""
        self._last_base: tuple[int, Params] | None = None
        # privacy and robustness (orchestrator.privacy.runtime, orchestrator.versions.guard)
        self._dp = PrivacyRuntime(config.privacy)
        self._guard = RobustGuard(config.robustness)
        self._budget_audited: set[str] = set()

    # -- public API -------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            raise OrchestratorError("the orchestrator is not running")
        return self._store

    @property
    def broker(self) -> MosquittoBroker | None:
        """The embedded broker (None when an external one is configured)."""
        return self._broker

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    @property
    def version(self) -> int:
        """The latest committed model version."""
        return self._model.version if self._model is not None else -1

    @property
    def published_version(self) -> int | None:
        return self._published[0] if self._published is not None else None

    @property
    def params(self) -> Params:
        """The latest version's parameters (do not modify)."""
        if self._model is None:
            raise OrchestratorError("the orchestrator is not running")
        return self._model.params

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def stopped_reason(self) -> str | None:
        return self._stopped

    @property
    def outstanding_tasks(self) -> int:
        return len(self._outstanding)

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def wait_for_version(self, version: int, *, published: bool = False) -> None:
        """Until ``version`` is committed (and, with ``published``, retained on the broker).
        Wrap it in ``asyncio.timeout``."""
        def reached() -> bool:
            if published:
                return self.published_version is not None and self.published_version >= version
            return self.version >= version

        async with self._published_event:
            await self._published_event.wait_for(reached)

    async def wait_stopped(self) -> str:
        """Until a stopping rule fires; returns its reason."""
        await self._stopped_event.wait()
        assert self._stopped is not None
        return self._stopped

    async def wait_closed(self) -> None:
        """Until the service stops (shutdown event or a fatal error, which is raised)."""
        if self._runner is None:
            raise OrchestratorError("the orchestrator is not running")
        await asyncio.shield(self._runner)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Orchestrator:
        if self._entered:
            raise OrchestratorError("an Orchestrator can be entered once")
        self._entered = True
        try:
            await self._start()
        except BaseException:
            await self._stop_everything()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        error = await self._stop_everything()
        if error is not None and exc is None:
            raise error

    async def _stop_everything(self) -> BaseException | None:
        self._shutdown.set()
        error: BaseException | None = None
        if self._runner is not None:
            try:
                await self._runner
            except BaseException as exc:  # reported to the caller
                error = exc
        await self._stack.aclose()
        self._store = None
        return error

    async def _start(self) -> None:
        cfg = self.config
        data_dir = cfg.federation.data_dir
        await asyncio.to_thread(data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        self._key = await asyncio.to_thread(load_or_create_key, cfg.federation.key_path)
        self._unseal = unseal_key(self._key)
        self._decoder = await self._stack.enter_async_context(
            DecodePool(cfg.ingest.decode_workers, self._ingest_policy, self._unseal))
        self._store = await self._stack.enter_async_context(
            Store.open(cfg.federation.store_path, clock=self._clock,
                       synchronous=self._synchronous))
        store = self._store
        self._registry = Registry(store)
        await self._registry.load()
        await self._load_model()
        await self._load_windows()
        await self._load_server_state()
        await self._dp.load(store)
        self._guard.load_state(await store.server_state(), isolated={
            d.device_id for d in self._registry.all() if d.status == "isolated"})
        if cfg.evaluation.dataset is not None:
            assert self._arch is not None
            data = await asyncio.to_thread(load_validation_set, cfg.evaluation)
            self._evaluator = await asyncio.to_thread(
                ServerEvaluator, self._arch.graphs["eval"], data)
        self._seqs = SeqCounter(load_limit=self._load_seq_limit, save_limit=self._save_seq_limit)
        await self._seqs.start()
        if cfg.broker.embedded:
            self._broker = await self._stack.enter_async_context(embedded_broker(cfg))
            host, port = self._broker.host, self._broker.port
            username: str | None = ORCHESTRATOR_USER
            password: str | None = self._broker.orchestrator_password
        else:
            host, port = cfg.broker.host, cfg.broker.port
            username, password = cfg.broker.username, cfg.broker.password
        self._link = MqttLink(
            MqttSettings(
                host=host, port=port, username=username, password=password,
                client_id=f"fedmq-orchestrator-{cfg.federation.id}",
                subscriptions=[self._topics.up_all, self._topics.ops_request],
                tls=cfg.broker.tls,
                ca_file=cfg.broker.ca_file, keepalive_s=cfg.broker.keepalive_s,
                session_expiry_s=cfg.broker.session_expiry_s,
            ),
            on_message=self._route, on_connect=self._on_connect, rng=self._rng,
        )
        self._publisher = ModelPublisher(
            sink=self._link, key=self._key, topics=self._topics, seqs=self._seqs,
            max_message_bytes=cfg.broker.max_message_bytes,
            load_chunks=self._load_chunks, save_chunks=self._save_chunks,
        )
        if self._rounds is not None:
            assert self._model is not None
            self._rounds.open(self._model.version, self._clock())
            buffered = await store.ledger(status="buffered")
            for row in buffered:
                if row.base_version is not None:
                    self._rounds.on_accepted(row.base_version)
        assert self._registry is not None
        self._ops = OperatorDesk(
            self, registry=self._registry, key=self._key, seqs=self._seqs,
            publish=self._link.publish, topics=self._topics, clock=self._clock,
            classify=lambda sender, seq: self._window(sender).classify(seq),
            mark_seen=self._mark_seen, counters=self.counters,
            interval_s=cfg.ops.fleet_interval_s, max_message_bytes=cfg.broker.max_message_bytes)
        if cfg.metrics.port is not None:
            try:
                self.metrics_endpoint = await self._stack.enter_async_context(
                    self.metrics.serve(cfg.metrics.host, cfg.metrics.port))
            except MetricsServerError as exc:
                raise OrchestratorError(str(exc)) from exc
            log.info("metrics at %s", self.metrics_endpoint.url)
        self._runner = asyncio.create_task(self._run(), name="orchestrator")
        waiter = asyncio.create_task(self._link.wait_connected())
        limit = cfg.broker.connect_timeout_s
        done, _ = await asyncio.wait({waiter, self._runner}, timeout=limit,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self._runner in done:
                self._runner.result()  # raises the runner's error
            why = f": {self._link.last_error}" if self._link.last_error else ""
            raise OrchestratorError(f"cannot connect to the MQTT broker at {host}:{port} "
                                    f"within {limit:g}s{why}")
        log.info("orchestrator for %r up: version %d, %d buffered, broker %s:%d",
                 cfg.federation.id, self.version, self._buffered, host, port)

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                assert self._link is not None
                tg.create_task(self._link.run(), name="mqtt")
                tg.create_task(self._decode_loop(), name="ingest-decode")
                tg.create_task(self._commit_loop(), name="ingest-commit")
                tg.create_task(self._control_loop(), name="control")
                tg.create_task(self._aggregate_loop(), name="aggregate")
                tg.create_task(self._publish_loop(), name="publish")
                if self._evaluator is not None:
                    tg.create_task(self._evaluate_loop(), name="evaluate")
                tg.create_task(self._registry_loop(), name="registry")
                if self._dp.enabled:
                    tg.create_task(self._dp.run(self.store), name="privacy")
                tg.create_task(self._housekeeping_loop(), name="housekeeping")
                tg.create_task(self._ops.run(), name="ops")
                tg.create_task(self._await_shutdown(), name="shutdown")
        except* _ShutdownRequested:
            log.info("orchestrator for %r stopped", self.config.federation.id)

    async def _await_shutdown(self) -> None:
        await self._shutdown.wait()
        raise _ShutdownRequested

    # -- start-up state ---------------------------------------------------------------------------

    async def _load_model(self) -> None:
        store = self.store
        latest = await store.latest_version()
        if latest is None:
            arch, params = await asyncio.to_thread(initial_model, self.config.model)
            arch_hash = await store.put_architecture(pack_architecture(arch))
            now = self._clock()
            info = await store.commit_version(
                params=params, kind="initial", parent=None, arch_hash=arch_hash,
                lineage={"source": "builder" if arch.spec is not None else "graphs_dir"},
                server_state={_STOPPING: StoppingState(now).to_bytes()},
            )
            await store.append_audit(AuditEvent("initialized", ORCHESTRATOR_SENDER, detail={
                "version": info.version, "arch_hash": arch_hash}))
        else:
            info = latest
            version = await store.get_version(latest.version)
            params = version.params
            arch = unpack_architecture(await store.get_architecture(latest.arch_hash))
            spec = self.config.model.spec
            if spec is not None and arch.spec is not None and spec.to_dict() != arch.spec:
                log.warning("[model] differs from the stored architecture; the federation "
                            "keeps its original model (start a new data_dir to change it)")
        self._arch = arch
        self._model = _Model(info.version, params, info.arch_hash, info.created_ms, info.parent)
        self._shapes = {name: tuple(p.shape) for name, p in params.items()}
        # the first publication republishes this version, with the delta from its parent
        if info.parent is not None:
            parent = await store.get_version(info.parent)
            self._first_base = (info.parent, parent.params)

    async def _load_windows(self) -> None:
        states = await self.store.load_replay_windows()
        for sender, state in states.items():
            self._committed[sender] = ReplayWindow.from_bytes(state)
            self._pending[sender] = _copy(self._committed[sender])
        self._buffered = await self.store.buffered_count()

    async def _load_server_state(self) -> None:
        state = await self.store.server_state()
        if _OPTIMIZER in state:
            try:
                self._optimizer.load_state_dict(state[_OPTIMIZER])
            except OptimizerStateError as exc:
                log.warning("server optimizer state not restored (%s); starting fresh", exc)
        stopping = (StoppingState.from_bytes(state[_STOPPING]) if _STOPPING in state
                    else StoppingState(self._clock()))
        self._stopping = StoppingRules(self.config.stopping, stopping)
        if _STOPPED in state:
            self._stopped = json.loads(state[_STOPPED])["reason"]
            self._stopped_event.set()

    async def _load_seq_limit(self) -> int:
        raw = await self.store.get_server_state(_SEQ_LIMIT)
        return int.from_bytes(raw, "big") if raw else 0

    async def _save_seq_limit(self, limit: int) -> None:
        await self.store.put_server_state({_SEQ_LIMIT: limit.to_bytes(8, "big")})

    async def _load_chunks(self) -> set[str]:
        raw = await self.store.get_server_state(_CHUNKS)
        return set(json.loads(raw)) if raw else set()

    async def _save_chunks(self, topics: set[str]) -> None:
        await self.store.put_server_state({_CHUNKS: json.dumps(sorted(topics)).encode()})

    # -- receiving --------------------------------------------------------------------------------

    async def _route(self, message: aiomqtt.Message) -> None:
        """Called by the MQTT link for every message, in order: queue it for its handler."""
        now = self._clock()
        try:
            parsed = parse_topic(str(message.topic))
        except FedmqError:
            self.counters["dropped.bad_topic"] += 1
            return
        payload = message.payload
        if parsed.fed == self._topics.fed and parsed.area == "ops" and parsed.kind == "request":
            self._ops.submit(message, now)  # never blocks: its own bounded queue
            return
        if (parsed.fed != self._topics.fed or parsed.area != "up" or parsed.device is None
                or not isinstance(payload, bytes | bytearray) or not payload):
            self.counters["dropped.ignored"] += 1
            return
        data = bytes(payload)
        if parsed.kind == UpKind.UPDATES:
            await self._updates.put(RawBatch(parsed.device, data, now))
        else:
            await self._control.put(_Control(parsed.device, str(parsed.kind), data, now))

    async def _on_connect(self) -> None:
        """Every (re)connect: republish the model (the broker may have lost it)."""
        self._republish = True
        self._publish_now.set()

    # -- ingestion --------------------------------------------------------------------------------

    async def _decode_loop(self) -> None:
        group_max = self.config.ingest.group_batches
        while True:
            group = [await self._updates.get()]
            while len(group) < group_max and not self._updates.empty():
                group.append(self._updates.get_nowait())
            senders: dict[str, SenderView] = {}
            windows: dict[str, ReplayWindow] = {}
            assert self._registry is not None and self._model is not None
            for batch in group:
                view = self._registry.get(batch.device)
                if view is None or batch.device in senders:
                    continue
                senders[batch.device] = SenderView(view.status, view.verify_key)
                if view.verify_key is not None:
                    windows[batch.device] = _copy(self._window(batch.device))
            model = ModelView(self._model.version, self._shapes)
            assert self._decoder is not None
            result = await self._decoder.judge(group, senders, windows, model, self._clock())
            for device, seqs in result.marks.items():
                window = self._window(device)
                for seq in seqs:
                    window.mark(seq)
            await self._judged.put(result)

    def _window(self, device: str) -> ReplayWindow:
        """The judging window of a device with a key (created empty on first use)."""
        window = self._pending.get(device)
        if window is None:
            window = self._pending[device] = ReplayWindow()
            self._committed.setdefault(device, ReplayWindow())
        return window

    async def _commit_loop(self) -> None:
        while True:
            result = await self._judged.get()
            await self._commit(result)

    async def _commit(self, result: GroupResult) -> None:
        rows = incoming_rows(result)
        async with self._windows_lock:
            states: dict[str, ReplayWindow] = {}
            for device, seqs in result.marks.items():
                window = _copy(self._committed.get(device) or ReplayWindow())
                for seq in seqs:
                    window.mark(seq)
                states[device] = window
            ids = await self.store.ingest(rows, {d: w.to_bytes() for d, w in states.items()})
            self._buffer_cache.put_many(
                ids, [r.delta if isinstance(r.delta, bytes) else None for r in rows])
            self._committed.update(states)
        # committed: now (and only now) the acks, the counters and the buffer
        acks: list[tuple[str, Ack]] = []
        accepted = 0
        for batch in result.batches:
            device = batch.batch.device
            self.counters["batches"] += 1
            if batch.failure is not None:
                self.counters[f"rejected.{batch.failure.reason.value}"] += 1
            for outcome in batch.outcomes:
                if isinstance(outcome, Accept):
                    accepted += 1
                    self.counters["accepted"] += 1
                    self._on_accepted(device, outcome)
                elif isinstance(outcome, Reject):
                    self.counters[f"rejected.{outcome.reason.value}"] += 1
                else:
                    self.counters["duplicate"] += 1
            entries = batch.ack_entries()
            if entries:
                acks.append((device, Ack(entries)))
        self._buffered += accepted
        if accepted and self._ready_to_aggregate():
            self._aggregate_now.set()
        if acks:
            await asyncio.gather(*(self._send(d, DownKind.ACK, a) for d, a in acks))
        observe_group(self.metrics, result, self._clock(), buffered=self._buffered)

    def _on_accepted(self, device: str, outcome: Accept) -> None:
        task = self._outstanding.get(device)
        if task is not None and task.task_id == outcome.update.task_id:
            self._outstanding.complete(device)
        if self._rounds is not None:
            self._rounds.on_accepted(outcome.update.base_version)

    # -- enroll, status, eval ---------------------------------------------------------------------

    async def _control_loop(self) -> None:
        """Enroll, status and eval messages on a few lanes, each device always on the same
        one: a device's messages are handled in order, other devices' meanwhile. Each handler
        awaits a store write and a QoS 1 publish; one at a time, a 5,000-device fleet's
        heartbeats outran them (196 answered of 496 a second)."""
        lanes: list[asyncio.Queue[_Control]] = [asyncio.Queue(64) for _ in range(_LANES)]
        async with asyncio.TaskGroup() as tg:
            for i, lane in enumerate(lanes):
                tg.create_task(self._control_lane(lane), name=f"control-{i}")
            while True:
                item = await self._control.get()
                await lanes[zlib.crc32(item.device.encode()) % _LANES].put(item)

    async def _control_lane(self, lane: asyncio.Queue[_Control]) -> None:
        handlers = {UpKind.ENROLL.value: self._on_enroll, UpKind.STATUS.value: self._on_status,
                    UpKind.EVAL.value: self._on_eval}
        while True:
            item = await lane.get()
            handler = handlers.get(item.kind)
            if handler is None:  # pragma: no cover - parse_topic admits only these kinds
                continue
            try:
                await handler(item)
            except FedmqError as exc:
                self.counters[f"{item.kind}.rejected.{exc.reason.value}"] += 1
                log.debug("%s from %s refused: %s", item.kind, item.device, exc)

    async def _on_enroll(self, item: _Control) -> None:
        cfg = self.config
        try:
            header, enroll = open_enroll(item.payload)
            check_header(header, fed=cfg.federation.id, sender=item.device,
                         now_ms=item.received_ms)
        except FedmqError as exc:
            # not answerable: nothing proves who sent it; still on the record
            await self.store.append_audit(AuditEvent(
                "rejected", ORCHESTRATOR_SENDER, device=item.device, reason=exc.reason.value,
                detail={"message": "enroll", "detail": exc.detail[:200]}))
            raise
        assert self._registry is not None
        device = await self._registry.reload_device(item.device)
        decision = judge_enroll(device, enroll, fed=cfg.federation.id,
                                manual_approval=cfg.federation.enrollment == "manual")
        if decision.register:
            await self.store.set_key(
                item.device, enroll.public_key, status=decision.new_status,  # type: ignore[arg-type]
                clear_secret=True,
                audit=AuditEvent("enrolled", ORCHESTRATOR_SENDER, device=item.device, detail={
                    "status": decision.new_status, "key_id": key_id(enroll.public_key),
                    "agent_version": enroll.agent_version}),
            )
            await self._registry.reload_device(item.device)
            async with self._windows_lock:
                # a (re-)enrolled key starts a fresh seq history
                self._committed[item.device] = ReplayWindow()
                self._pending[item.device] = ReplayWindow()
                await self.store.save_replay_windows({item.device: ReplayWindow().to_bytes()})
            self.counters["enrolled"] += 1
        elif decision.status is EnrollStatus.REJECTED:
            await self.store.append_audit(AuditEvent(
                "rejected", ORCHESTRATOR_SENDER, device=item.device, reason=decision.reason,
                detail={"message": "enroll", "key_id": key_id(enroll.public_key)}))
            # counted once audited (plain reads do not wait for writes: see store)
            self.counters[f"enroll.rejected.{decision.reason}"] += 1
        await self._send(item.device, DownKind.ENROLLED, Enrolled(
            item.device, decision.status, decision.reason,
            heartbeat_s=cfg.federation.heartbeat_s))

    async def _open_signed(self, item: _Control) -> tuple[Opened, bool]:
        """Verify and bind an active device's message: ``(opened, fresh)``; a replay or a
        message from a device that is not active raises."""
        assert self._registry is not None
        view = self._registry.get(item.device)
        if view is None or view.verify_key is None:
            raise FedmqError(Reason.UNKNOWN_SENDER, f"no key for {item.device!r}")
        opened = verify(item.payload, view.verify_key)
        check_header(opened.header, fed=self.config.federation.id, sender=item.device,
                     now_ms=item.received_ms)
        if view.status != "active":
            raise FedmqError(_status_reason(view.status), f"device is {view.status}")
        verdict = self._window(item.device).classify(opened.header.seq)
        if verdict is Verdict.REPLAY:
            raise FedmqError(Reason.REPLAY, f"seq {opened.header.seq}")
        return opened, verdict is Verdict.FRESH

    async def _mark_seen(self, device: str, seq: int, **heartbeat: Any) -> None:
        async with self._windows_lock:
            self._window(device).mark(seq)
            committed = self._committed[device]
            committed.mark(seq)
            if heartbeat:
                await self.store.record_heartbeat(device, replay_state=committed.to_bytes(),
                                                  **heartbeat)
            else:
                await self.store.save_replay_windows({device: committed.to_bytes()})

    async def _on_status(self, item: _Control) -> None:
        opened, fresh = await self._open_signed(item)
        if not fresh:
            self.counters["status.duplicate"] += 1
            return
        status = decode_body(opened, Status)
        await self._mark_seen(
            item.device, opened.header.seq, seen_ms=item.received_ms,
            last_status=json.dumps(_jsonable(status)).encode(),
        )
        self.counters["status"] += 1
        await self._answer_status(item.device, status)

    async def _answer_status(self, device: str, status: Status) -> None:
        now = self._clock()
        if status.state not in (AgentState.IDLE, AgentState.DEFERRED):
            return
        if self._stopped is not None:
            await self._send(device, DownKind.TASK, Defer(
                int(self.config.selection.retry_after_s * 10_000),
                Reason.FEDERATION_STOPPED.value))
            return
        published = self.published_version
        if published is None:
            await self._send(device, DownKind.TASK, Defer(_NO_MODEL_RETRY_MS, "no_model"))
            return
        if not self._dp.budget_left(device):
            # checked here, not through the selection's budget_left hook: the device is told
            # the protocol reason (budget_exhausted) and the refusal is audited once
            if device not in self._budget_audited:
                self._budget_audited.add(device)
                await self.store.append_audit(AuditEvent(
                    "rejected", ORCHESTRATOR_SENDER, device=device,
                    reason=Reason.BUDGET_EXHAUSTED.value,
                    detail={"message": "task", "epsilon": self._dp.spent(device)}))
            self.counters["deferred.budget_exhausted"] += 1
            await self._send(device, DownKind.TASK, Defer(
                int(self.config.selection.retry_after_s * 10_000),
                Reason.BUDGET_EXHAUSTED.value))
            return
        if await self._maybe_federated_eval(device, status, published, now):
            return
        if self._rounds is not None:
            r = self._rounds.current
            busy = self._outstanding.busy(device) or not self._rounds.may_task(device)
            n = len(r.assigned) if r is not None else self.config.selection.concurrency
            decision = self._selection.decide(device, status, outstanding=n, busy=busy,
                                              now_ms=now)
            version = r.version if r is not None else published
        else:
            decision = self._selection.decide(
                device, status, outstanding=len(self._outstanding),
                busy=self._outstanding.busy(device), now_ms=now)
            version = published
        if decision is None:
            return
        if isinstance(decision, Deferred):
            self.counters[f"deferred.{decision.reason}"] += 1
            await self._send(device, DownKind.TASK, Defer(decision.retry_after_ms,
                                                          decision.reason))
            return
        t = self.config.training
        noise = self._dp.task_noise(t.clip_norm, t.noise_multiplier)
        klass = task_settings(status, self.config.selection, t)
        self.counters[f"tasks.{klass.device_class}"] += 1
        task = Task(
            task_id=uuid.UUID(int=self._rng.getrandbits(128)).hex[:16], model_version=version,
            epochs=klass.epochs, batch_size=klass.batch_size, lr=t.lr, mu=t.mu,
            clip_norm=noise.clip_norm, noise_multiplier=noise.noise_multiplier,
            codec=klass.codec, seal=t.seal,
            deadline_ms=now + int(t.deadline_s * 1000), min_battery_pct=t.min_battery_pct,
            max_thermal=Thermal(t.max_thermal),
        )
        self._outstanding.add(Outstanding(device, task.task_id, version, task.deadline_ms))
        if self._rounds is not None:
            self._rounds.assign(device)
        self.counters["tasks"] += 1
        await self._send(device, DownKind.TASK, task)

    async def _on_eval(self, item: _Control) -> None:
        opened, fresh = await self._open_signed(item)
        if not fresh:
            return
        report = decode_body(opened, EvalReport)
        await self._mark_seen(item.device, opened.header.seq)
        if 0 <= report.model_version <= self.version:
            metrics: dict[str, Any] = {
                f"federated/{item.device}": {"samples": report.num_samples, "loss": report.loss,
                                             "metric": report.metric,
                                             "metric_name": report.metric_name}}
            folded = self._fedeval.on_report(item.device, report)
            if folded is not None and folded[0] == report.model_version:
                metrics.update(folded[1])  # the sample-weighted federation-wide figures
            await self.store.set_version_metrics(report.model_version, metrics)
        self.counters["eval_reports"] += 1

    async def _maybe_federated_eval(self, device: str, status: Status, published: int,
                                    now: int) -> bool:
        """Hand an asking device an evaluate task if the published version wants one (and the
        device is fit for work: evaluation spends battery too)."""
        if (self._outstanding.busy(device) or not self._fedeval.wants(device, published)
                or self._selection.unfit(status) is not None):
            return False
        task = Task(task_id=uuid.UUID(int=self._rng.getrandbits(128)).hex[:16],
                    model_version=published, action=TaskAction.EVALUATE,
                    deadline_ms=now + int(self.config.training.deadline_s * 1000))
        self._fedeval.on_task(device, task.task_id, published)
        self.counters["tasks.evaluate"] += 1
        await self._send(device, DownKind.TASK, task)
        return True

    def _device_standing(self, device: str) -> str | None:
        """The selection policy's enrolled-and-in-good-standing check (registry view)."""
        view = self._registry.get(device) if self._registry is not None else None
        if view is None or view.verify_key is None:
            return "not_enrolled"
        return None if view.status == "active" else view.status

    # -- sending ----------------------------------------------------------------------------------

    async def _send(self, device: str, kind: DownKind, message: Message) -> None:
        """Sign and publish one message to a device; dropped (counted) when disconnected."""
        assert self._seqs is not None and self._link is not None
        seq = await self._seqs.next()
        payload = pack(message, key=self._key, fed=self._topics.fed, sender=ORCHESTRATOR_SENDER,
                       seq=seq, ts_ms=self._clock(), to=device)
        try:
            await self._link.publish(self._topics.down(device, kind), payload, qos=1)
        except NotConnected:
            self.counters[f"dropped.{kind.value}"] += 1

    # -- aggregation ------------------------------------------------------------------------------

    def _ready_to_aggregate(self) -> bool:
        if self._stopped is not None:
            return False
        if self._rounds is not None:
            return self._rounds.due(self._clock())
        return self._fedbuff.ready(self._buffered)

    async def _aggregate_loop(self) -> None:
        while True:
            await self._aggregate_now.wait()
            self._aggregate_now.clear()
            await self._apply_rollback()
            while self._ready_to_aggregate():
                started = time.perf_counter()
                if self._rounds is not None:
                    await self._aggregate_sync()
                else:
                    await self._aggregate_async()
                self.metrics.observe_aggregation(time.perf_counter() - started)

    async def _aggregate_async(self) -> None:
        model = self._model
        assert model is not None
        agg = self.config.aggregation
        entries = await self._load_buffer(agg.max_per_version or agg.k)
        if not entries:
            self._buffered = 0
            return
        entries = await self._screened(entries)
        if not entries:
            return
        result = await asyncio.to_thread(self._dp.aggregate, self._fedbuff, model.params,
                                         model.version, entries)
        await self._commit_aggregate(result, strategy="fedbuff", entries=entries)

    async def _aggregate_sync(self) -> None:
        model, rounds = self._model, self._rounds
        assert model is not None and rounds is not None and rounds.current is not None
        round_version = rounds.current.version
        entries = await self._screened(await self._load_buffer(None))
        result = await asyncio.to_thread(self._fedavg.aggregate, model.params, entries,
                                         round_version)
        await self._commit_aggregate(result, strategy="fedavg", entries=entries)
        rounds.open(self.version, self._clock())

    async def _load_buffer(self, limit: int | None) -> list[BufferedUpdate]:
        """The oldest buffered updates with their float32 deltas (see buffer_cache)."""
        return await load_buffer(self.store, self._buffer_cache, limit)

    async def _screened(self, entries: list[BufferedUpdate]) -> list[BufferedUpdate]:
        """The entries left once screening quarantined the flagged ones (see robust.py)."""
        if not self._guard.enabled:
            return entries
        assert self._registry is not None
        report = await self._guard.screen(
            self.store, entries, now_ms=self._clock(), on_isolated=self._on_isolated,
            isolated={d.device_id for d in self._registry.all() if d.status == "isolated"})
        self._buffered = max(0, self._buffered - len(report.quarantined))
        self.counters.update(f"quarantined.{r}" for r in report.quarantined.values())
        return report.kept

    async def _on_isolated(self, device: str, reason: str) -> None:
        assert self._registry is not None
        await self._registry.reload_device(device)
        self._outstanding.complete(device)
        self._selection.forget(device)
        self.counters["isolated"] += 1
        await self._send(device, DownKind.CONTROL, Control(ControlAction.ISOLATE, reason))

    async def _commit_aggregate(self, result: AggregateResult, *, strategy: str,
                                entries: list[BufferedUpdate]) -> None:
        model = self._model
        assert model is not None
        store = self.store
        if not result.has_update:
            by_reason: dict[str, list[int]] = {}
            for uid, reason in result.dropped.items():
                by_reason.setdefault(reason, []).append(uid)
            for reason, ids in by_reason.items():
                await store.mark_updates(ids, "rejected", reason)
            self._buffered = max(0, self._buffered - len(result.dropped))
            self.counters["aggregate.empty"] += 1
            return
        assert result.params is not None
        staleness = [result.staleness[uid] for uid in result.used_ids]
        senders = {e.update_id: e.sender for e in entries}
        assert self._registry is not None
        population = sum(1 for d in self._registry.all()
                         if d.role == "device" and d.status == "active")
        plan = self._dp.plan([senders[uid] for uid in result.used_ids], population)
        used = set(result.used_ids)
        # each contributor's update norm and cosine to the aggregate, in the version's metrics
        drift = await asyncio.to_thread(drift_signals,
                                        [e for e in entries if e.update_id in used],
                                        model.params, result.params)
        try:
            info = await store.commit_version(
                params=result.params, kind="aggregate", parent=model.version,
                lineage={"strategy": strategy,
                         "staleness": {str(k): v for k, v in result.staleness.items()},
                         "dropped": {str(k): v for k, v in result.dropped.items()}},
                applied=dict(result.weights), dropped=dict(result.dropped),
                server_state={_OPTIMIZER: self._optimizer.state_dict(), **self._guard.state(),
                              **(plan.server_state if plan is not None else {})},
                metrics={"updates": len(result.used_ids), "dropped": len(result.dropped),
                         "delta_norm": result.delta_norm,
                         "mean_staleness": float(np.mean(staleness)) if staleness else 0.0,
                         **({"drift": drift} if drift else {})},
                privacy=plan.charges if plan is not None else None,
            )
        except BaseException:
            # the optimizer stepped for a version that does not exist: rewind it
            state = await store.get_server_state(_OPTIMIZER)
            if state is not None:
                self._optimizer.load_state_dict(state)
            raise
        self._buffered = max(0, self._buffered - len(result.used_ids) - len(result.dropped))
        self.counters["versions"] += 1
        for versions_behind in staleness:
            self.metrics.observe_staleness(versions_behind)
        self._guard.observe(result.delta)
        if plan is not None:
            await self._dp.committed(plan, info.version)
        await self._set_model(_Model(info.version, result.params, info.arch_hash,
                                     info.created_ms, info.parent))
        if self._evaluator is None and self._stopping is not None:
            why = self._stopping.on_version(info.version, None)
            await self._save_stopping()
            if why is not None:
                await self._stop(why)

    async def _set_model(self, model: _Model) -> None:
        self._model = model
        self.metrics.set_version(model.version)
        self._publish_now.set()
        self._evaluate_now.set()
        async with self._published_event:
            self._published_event.notify_all()

    # -- publication and evaluation ---------------------------------------------------------------

    async def _publish_loop(self) -> None:
        assert self._publisher is not None and self._arch is not None
        interval = self.config.aggregation.publish_interval_s
        last = float("-inf")
        while True:
            await self._publish_now.wait()
            # versions made while this waits are coalesced: the latest one goes out
            await asyncio.sleep(max(0.0, last + interval - time.monotonic()))
            self._publish_now.clear()
            model = self._model
            assert model is not None
            current = self._published
            if current is not None and current[0] == model.version and not self._republish:
                continue
            if current is not None and current[0] < model.version:
                base: tuple[int, Params] | None = current
            elif current is not None and current[0] == model.version:
                base = self._last_base
            else:
                base = self._first_base
            republish = self._republish
            self._republish = False
            release = ModelRelease(
                version=model.version, params=model.params, graphs=self._arch.graphs,
                parent=model.parent, created_ms=model.created_ms,
                stopped=self._stopped is not None, base=base,
            )
            try:
                await self._publisher.publish(release)
            except NotConnected as exc:
                log.info("model v%d not published yet: %s", model.version, exc)
                self._republish = self._republish or republish
                continue  # the next connect triggers it again
            last = time.monotonic()
            self._last_base = base
            self._published = (model.version, model.params)
            self.counters["published"] += 1
            async with self._published_event:
                self._published_event.notify_all()

    async def _evaluate_loop(self) -> None:
        assert self._evaluator is not None
        while True:
            await self._evaluate_now.wait()
            self._evaluate_now.clear()
            model = self._model
            assert model is not None
            if model.version == self._evaluated:
                continue
            metrics = await asyncio.to_thread(self._evaluator.evaluate, model.params)
            await self.store.set_version_metrics(
                model.version, {f"server_{k}": v for k, v in metrics.items()})
            self._evaluated = model.version
            self.counters["evaluations"] += 1
            if self._stopping is not None and self._stopped is None:
                reason = self._stopping.on_version(model.version, metrics["metric"])
                await self._save_stopping()
                if reason is not None:
                    await self._stop(reason)

    async def _save_stopping(self) -> None:
        assert self._stopping is not None
        await self.store.put_server_state({_STOPPING: self._stopping.state.to_bytes()})

    async def _stop(self, reason: str) -> None:
        """A stopping rule fired: record it, stop tasking, republish with ``stopped``."""
        if self._stopped is not None:
            return
        self._stopped = reason
        self._stopped_event.set()
        detail = {"reason": reason, "version": self.version, "ts_ms": self._clock()}
        await self.store.put_server_state({_STOPPED: json.dumps(detail).encode()})
        await self.store.append_audit(AuditEvent("stopped", ORCHESTRATOR_SENDER, reason=reason,
                                                 detail=detail))
        log.info("federation %r stopped: %s", self.config.federation.id, reason)
        self._republish = True
        self._publish_now.set()
        # the retained model says so too; this reaches connected agents at once
        assert self._registry is not None
        stop = Control(ControlAction.STOP, reason)
        for view in self._registry.all():
            if view.role == "device" and view.status == "active":
                await self._send(view.device_id, DownKind.CONTROL, stop)

    # -- background upkeep ------------------------------------------------------------------------

    async def _registry_loop(self) -> None:
        assert self._registry is not None
        while True:
            await asyncio.sleep(_REGISTRY_POLL_S)
            for before, after in await self._registry.refresh():
                device = (after or before).device_id  # type: ignore[union-attr]
                if after is None or after.status != "active":
                    self._outstanding.complete(device)
                    self._selection.forget(device)
                elif before is not None and before.status == "isolated":
                    # an operator reinstated it (fedmq device reinstate)
                    self._guard.reinstate(device)
                    await self._send(device, DownKind.CONTROL,
                                     Control(ControlAction.REINSTATE, "reinstated"))
                log.info("device %s: %s -> %s", device, before.status if before else None,
                         after.status if after else None)

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            now = self._clock()
            late = self._outstanding.expire(now)
            if late:
                self.counters["stragglers"] += len(late)
            if self._rounds is not None:
                if self._rounds.restart_if_empty(now):
                    self.counters["rounds.restarted"] += 1
                if self._ready_to_aggregate():
                    self._aggregate_now.set()
            if self._stopping is not None and self._stopped is None:
                reason = self._stopping.on_clock(now)
                if reason is not None:
                    await self._stop(reason)
            await self._poll_rollback()

    async def _poll_rollback(self) -> None:
        """A rollback requested in the store (``fedmq model rollback``) wakes the aggregation
        task, which applies it between aggregates."""
        tick = asyncio.get_running_loop().time()
        if tick - self._rollback_polled < _ROLLBACK_POLL_S:
            return
        self._rollback_polled = tick
        if await pending_rollback(self.store) is not None:
            self._rollback_due = True
            self._aggregate_now.set()

    async def _apply_rollback(self) -> None:
        if not self._rollback_due:  # keeps store reads off the per-aggregate path
            return
        self._rollback_due = False
        # read again here: this task is the only one that commits versions
        request = await pending_rollback(self.store)
        if request is None:
            return
        try:
            info, params = await apply_rollback(self.store, request, actor=ORCHESTRATOR_SENDER)
        except RollbackError as exc:
            log.warning("%s", exc)
            return
        self.counters["rollbacks"] += 1
        log.info("rolled back to v%d's weights as v%d (requested by %s)", request.version,
                 info.version, request.actor)
        await self._set_model(_Model(info.version, params, info.arch_hash, info.created_ms,
                                     info.parent))
        if self._rounds is not None:
            self._rounds.open(self.version, self._clock())


# -- helpers -------------------------------------------------------------------------------------


def _copy(window: ReplayWindow) -> ReplayWindow:
    return ReplayWindow(size=window.size, high=window.high, bits=window.bits)


def _status_reason(status: str) -> Reason:
    return {"revoked": Reason.REVOKED, "isolated": Reason.ISOLATED}.get(
        status, Reason.NOT_AUTHORIZED)


def _jsonable(status: Status) -> dict[str, Any]:
    return {f.name: getattr(status, f.name) for f in dataclasses.fields(status)}


def _optimizer(config: Config) -> ServerOptimizer:
    agg = config.aggregation
    if agg.server_optimizer == "sgd":
        return optimizer_from_config("sgd", lr=agg.server_lr, momentum=agg.server_momentum)
    return optimizer_from_config(agg.server_optimizer, lr=agg.server_lr, beta1=agg.beta1,
                                 beta2=agg.beta2, tau=agg.tau)


def _staleness(config: Config) -> Any:
    agg = config.aggregation
    kwargs: dict[str, Any] = {}
    if agg.staleness == "polynomial" and agg.a is not None:
        kwargs["a"] = agg.a
    if agg.staleness == "hinge":
        if agg.a is not None:
            kwargs["a"] = agg.a
        if agg.b is not None:
            kwargs["b"] = agg.b
    return staleness_from_config(agg.staleness, **kwargs)
