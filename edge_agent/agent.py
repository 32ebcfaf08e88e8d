"""``Agent``: one edge device — its lifecycle, nothing else.

``async with Agent(bundle, data, state_path) as agent: await agent.run_until(stop_event)``.
Entering opens the state file, builds the parts and runs their loops as named tasks in one
TaskGroup: ``session`` (the MQTT connection, handing messages to the ``Downlink``),
``heartbeat``, ``flusher`` (the outbox), ``worker`` (tasks) and, when the data is a
directory, ``data`` (its sliding window, :mod:`.datastream`). What the device is doing lives
in one ``ActivityTracker``; the parts share small objects (``shared``) and events instead of
calling back into the agent. Leaving (or ``stop()``) publishes a retained offline status when
it can, cancels the tasks and closes the state file: one shutdown path. A revoked agent also
destroys its key and outbox on the way out, and never enters again: its tombstone
(:mod:`.tombstone`) makes entering raise ``RevokedError``. Several agents run in one process
by entering several ``Agent`` contexts; each logs as ``edge_agent.<device_id>``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from schemas import AgentState, Bundle, ErrorFeedback, Status, Task, Topics, UpKind
from schemas.secagg.session import MemberSession

from .activity import Activity
from .backoff import Backoff, Sleep
from .buckets import Buckets
from .clock import Clock, as_clock, wall_ms
from .config import AGENT_VERSION, AgentConfig
from .data import FixedData, LocalData, TrainingSet
from .datastream import DataDirectory, DirectorySource
from .downlink import Downlink
from .flusher import Flusher
from .heartbeat import Heartbeat, Profile, Reporter
from .keeper import ModelKeeper
from .login import BrokerLogin
from .models import ModelReceiver
from .orchkeys import OrchestratorKeys
from .outbox import Outbox, ResendPolicy
from .probes import DeviceProbe, SysfsProbe
from .records import StoredModel
from .rotation import KeyRotator
from .scoring import AnomalyMonitor
from .session import BrokerAddress, Session
from .shared import AgentStats, Offload, Pace, ProbeReader, Pulse, Settings, Shutdown, signal_all
from .signer import Signer
from .state import Enrollment, LocalState
from .supervision import keep_running
from .tombstone import Tombstone, tombstone_path
from .tracker import ActivityTracker
from .training import train_update  # looked up here at build time: tests wrap it
from .worker import Worker

__all__ = ["AGENT_VERSION", "Agent", "AgentStats"]

_SHUTDOWN_S = 15.0  # real time: how long a shutdown may take before the tasks are cancelled


@dataclass(frozen=True, slots=True)
class _Parts:
    state: LocalState
    outbox: Outbox
    tracker: ActivityTracker
    models: ModelKeeper
    session: Session
    flusher: Flusher
    heartbeat: Heartbeat
    downlink: Downlink
    worker: Worker
    rotator: KeyRotator
    data: DirectorySource | None
    buckets: Buckets


class Agent:
    """One device's agent (an async context manager; not re-entrant)."""

    def __init__(
        self,
        bundle: Bundle,
        data: LocalData | DataDirectory,
        state_path: str | Path,
        *,
        config: AgentConfig | None = None,
        probe: DeviceProbe | None = None,
        clock: Clock | Callable[[], float] | None = None,
        backoff_sleep: Sleep | None = None,
        backoff_rng: random.Random | None = None,
        executor: Executor | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """
        Args:
            bundle: the enrollment bundle (identity, broker, pinned orchestrator key).
            data: the local data set, or a directory whose newest ``config.window`` samples
                are trained on (``datastream``); ``config.holdout`` is kept for evaluation.
            state_path: the agent's SQLite file (created 0600 on first boot).
            probe: device-state source; default ``SysfsProbe()``.
            clock: wall time, monotonic time and sleep for every part (``clock.Clock``);
                a bare wall-time function is accepted too. Default: the real clock.
            backoff_sleep, backoff_rng: injected into the reconnect backoff (the sleep
                defaults to the clock's).
            executor: where training and other CPU work run (default: asyncio's).
            tls_context: an ``ssl.SSLContext`` when the bundle asks for TLS.
        """
        self.config = config or AgentConfig()
        self.bundle = bundle
        self.device_id = bundle.device_id
        self.fed = bundle.fed
        self.topics = Topics(bundle.fed)
        self.log = logging.getLogger(f"edge_agent.{bundle.device_id}")
        self._state_path = Path(state_path)
        self._clock = as_clock(clock)
        self._offload = Offload(executor)
        self._probe = ProbeReader(probe if probe is not None else SysfsProbe(), self._offload)
        self._tls = tls_context
        self._bundle_key = bytes.fromhex(bundle.orchestrator_key)
        self._data_dir = data if isinstance(data, DataDirectory) else None
        self._training: TrainingSet | None = None if isinstance(data, DataDirectory) else \
            FixedData.of(data, self.config.holdout, np.random.default_rng(self.config.seed))
        self._backoff = Backoff(self.config.backoff_base_s, self.config.backoff_cap_s,
                                rng=backoff_rng, sleep=backoff_sleep or self._clock.sleep)
        self.stats = AgentStats()
        self._changed = Pulse()
        self._shutdown = Shutdown()
        self._pace = Pace()
        self._stack = AsyncExitStack()
        self._parts: _Parts | None = None
        self._keys: OrchestratorKeys | None = None
        self._main: asyncio.Task[None] | None = None

    # -- public view ----------------------------------------------------------------------------

    def _running(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("the agent is not running")
        return self._parts

    @property
    def data_source(self) -> DirectorySource | None:
        """The sliding window over a data directory (None for a single file)."""
        return self._parts.data if self._parts is not None else None

    @property
    def train_data(self) -> LocalData:
        """What the next task trains on (a directory's: once the agent is running)."""
        return self._trained_on().train

    @property
    def holdout_data(self) -> LocalData:
        return self._trained_on().holdout

    def _trained_on(self) -> TrainingSet:
        if self._training is None:
            raise RuntimeError("the agent is not running (its data directory is not read)")
        return self._training

    @property
    def outbox(self) -> Outbox:
        return self._running().outbox

    @property
    def session(self) -> Session:
        return self._running().session

    @property
    def flusher(self) -> Flusher:
        return self._running().flusher

    @property
    def rotator(self) -> KeyRotator:
        return self._running().rotator

    @property
    def local_state(self) -> LocalState:
        return self._running().state

    @property
    def finished(self) -> str | None:
        """Why the agent ended by itself (``revoked``, ``enrollment_rejected``), else None."""
        return self._shutdown.finished

    @property
    def tombstone_path(self) -> Path:
        """Where this device's tombstone is written once it is revoked."""
        return tombstone_path(self._state_path, self.device_id)

    def tombstone(self) -> Tombstone | None:
        """The tombstone, once the orchestrator revoked this device."""
        return Tombstone.read(self.tombstone_path, self.device_id)

    @property
    def last_status(self) -> Status | None:
        return self._parts.heartbeat.last_status if self._parts is not None else None

    @property
    def orchestrator_key(self) -> bytes:
        """The orchestrator key this device pins now (the bundle's, until a rotation)."""
        return self._keys.ring.current if self._keys is not None else self._bundle_key

    @property
    def step_time_ms(self) -> float | None:
        return self._pace.step_time_ms

    @property
    def activity(self) -> Activity:
        """What the device is doing (the state machine's current value)."""
        return self._parts.tracker.current if self._parts is not None else Activity()

    @property
    def defer_until_ms(self) -> int:
        """Do not ask for work (idle heartbeat) before this wall-clock time."""
        return self.activity.deferred_until_ms

    @property
    def model_version(self) -> int | None:
        return self._parts.models.version if self._parts is not None else None

    @property
    def buckets(self) -> dict[str, MemberSession]:
        """The secure buckets this device is a member of, by id (read-only view)."""
        return dict(self._parts.buckets.sessions) if self._parts is not None else {}

    @property
    def model(self) -> StoredModel | None:
        """The model held (with its annex), if any."""
        held = self._parts.models.current if self._parts is not None else None
        return held.stored if held is not None else None

    @property
    def enrollment(self) -> Enrollment | None:
        return self.activity.enrollment

    @property
    def state(self) -> tuple[AgentState, str]:
        """What the next heartbeat reports: ``(state, reason)``."""
        return self.activity.report(wall_ms(self._clock))

    async def wait_until(self, predicate: Callable[[Agent], bool], within: float) -> None:
        """Wait until ``predicate(agent)`` holds (re-checked on every event), or raise
        ``TimeoutError`` after ``within`` seconds of real time (a guard, not behaviour)."""
        async with asyncio.timeout(within):
            while not predicate(self):
                await self._changed.wait()

    async def deliver(self, topic: str, payload: bytes) -> None:
        """Handle one message as if it had arrived on ``topic`` (see ``Downlink.deliver``)."""
        await self._running().downlink.deliver(topic, payload)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        if self._main is not None:
            raise RuntimeError("an Agent runs once")
        stone = await asyncio.to_thread(Tombstone.read, self.tombstone_path, self.device_id)
        if stone is not None:
            raise stone.error()
        try:
            self._parts = await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        self._main = asyncio.create_task(self._supervise(self._parts),
                                         name=f"agent:{self.device_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        try:
            if self._main is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self._main), _SHUTDOWN_S)
                except TimeoutError:
                    self.log.error("shutdown took longer than %ss; cancelling", _SHUTDOWN_S)
                    self._main.cancel()
                    await asyncio.gather(self._main, return_exceptions=True)
        finally:
            await self._stack.aclose()

    def stop(self) -> None:
        """Ask the agent to shut down (idempotent); ``run_until`` then returns."""
        self._shutdown.request()
        self._changed.fire()

    async def run_until(self, stop: asyncio.Event | None = None) -> str | None:
        """Run until ``stop`` is set, ``stop()`` is called, or the agent ends by itself
        (returns ``finished``). A failure of one of the agent's tasks is raised here."""
        assert self._main is not None, "enter the agent first"
        waiters: set[asyncio.Future[Any]] = {
            self._main, asyncio.ensure_future(self._shutdown.requested.wait())}
        if stop is not None:
            waiters.add(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                if w is not self._main:
                    w.cancel()
        self.stop()
        await asyncio.shield(self._main)
        return self.finished

    async def _supervise(self, parts: _Parts) -> None:
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("heartbeat", parts.heartbeat.run),
            ("flusher", parts.flusher.run),
            ("worker", parts.worker.run),
            ("rotation", lambda: parts.rotator.run(parts.session)),
        ]
        if parts.data is not None:
            loops.append(("data", parts.data.run))
        guard: dict[str, Any] = {"clock": self._clock, "logger": self.log}
        try:
            async with asyncio.TaskGroup() as group:
                session = group.create_task(keep_running("session", parts.session.run, **guard),
                                            name=f"{self.device_id}:session")
                workers = [group.create_task(keep_running(name, fn, **guard),
                                             name=f"{self.device_id}:{name}")
                           for name, fn in loops]
                await self._shutdown.requested.wait()
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                # the goodbye is the last status: nothing else may publish after it
                await parts.heartbeat.goodbye(self.finished or "shutdown")
                session.cancel()
            if parts.tracker.current.revoked is not None:
                await self._destroy(parts)
        finally:
            self._changed.fire()

    async def _destroy(self, parts: _Parts) -> None:
        """Revoked: the outbox (anything a late task put there) and the key, for good."""
        await parts.outbox.destroy()
        stone = await asyncio.to_thread(Tombstone.read, self.tombstone_path, self.device_id)
        line = stone.line if stone is not None else f"device {self.device_id} was revoked"
        await parts.state.destroy_secrets(line)
        self.log.info("signing key and outbox destroyed")

    # -- building the parts ---------------------------------------------------------------------

    async def _open(self) -> _Parts:
        """Open the state file and build every part over it."""
        state = await self._stack.enter_async_context(
            LocalState(self._state_path, device_id=self.device_id, fed=self.fed))
        outbox = await Outbox.open(state, ResendPolicy(int(self.config.ack_timeout_s * 1000),
                                                       int(self.config.max_ack_timeout_s * 1000)))
        keys = OrchestratorKeys(state, self._bundle_key, fed=self.fed, clock=self._clock,
                                logger=self.log)
        await keys.load()
        self._keys = keys
        receiver = ModelReceiver(orchestrator_key=keys, fed=self.fed, clock=self._clock.wall)
        models = ModelKeeper(state, receiver, offload=self._offload, clock=self._clock,
                             intra_op_threads=self.config.intra_op_threads, logger=self.log)
        await models.load()
        held = models.current
        status_due = asyncio.Event()
        tracker = await ActivityTracker.load(
            state, model_stopped=held is not None and held.stored.stopped, clock=self._clock,
            status_due=status_due, changed=self._changed)
        enrollment = tracker.current.enrollment
        self.log.info("state %s: seq %d, outbox %d, model %s, enrollment %s", state.path,
                      state.last_seq, len(outbox), models.version,
                      enrollment.status.value if enrollment else "none")
        source = await self._data_source(state, models)
        return await self._build(state, outbox, models, tracker, status_due, source)

    async def _data_source(self, state: LocalState,
                           models: ModelKeeper) -> DirectorySource | None:
        """The directory's window, rebuilt from what was consumed before (None: one file);
        what arrives is also scored for anomalies."""
        if self._data_dir is None:
            return None
        c = self.config
        monitor = AnomalyMonitor(models, stats=self.stats, offload=self._offload,
                                 logger=self.log)
        source = DirectorySource(
            self._data_dir, store=state, window=c.window, poll_s=c.data_poll_s,
            max_file_bytes=c.max_data_file_bytes, holdout=c.holdout, salt=c.seed or 0,
            clock=self._clock, stats=self.stats, changed=self._changed, offload=self._offload,
            logger=self.log, monitor=monitor)
        await source.load()
        self._training = source
        return source

    async def _build(self, state: LocalState, outbox: Outbox, models: ModelKeeper,
                     tracker: ActivityTracker, status_due: asyncio.Event,
                     source: DirectorySource | None) -> _Parts:
        config, clock, changed = self.config, self._clock, self._changed
        keys = self._keys
        assert keys is not None  # loaded in _open
        outbox_due = asyncio.Event()
        settings = Settings.from_record(await state.get("settings", {}))
        signer = Signer(state, outbox, device_id=self.device_id, fed=self.fed,
                        orchestrator_keys=keys, clock=clock, offload=self._offload,
                        max_update_bytes=config.batch_bytes)
        data = self._trained_on()
        profile = Profile.of(self.device_id, self.topics, data,
                             enroll_secret=bytes.fromhex(self.bundle.enroll_secret),
                             device_class=config.device_class)
        reporter = Reporter(profile, signer=signer, tracker=tracker, models=models,
                            outbox=outbox, pace=self._pace, stats=self.stats)
        tasks: asyncio.Queue[Task] = asyncio.Queue(config.max_queued_tasks)
        common: dict[str, Any] = {"clock": clock, "stats": self.stats, "changed": changed}
        login = BrokerLogin(state, self.bundle.mqtt_password, logger=self.log)
        await login.load()
        rotator = KeyRotator(state=state, signer=signer, outbox=outbox, tracker=tracker,
                             topic=self.topics.up(self.device_id, UpKind.ROTATE), config=config,
                             status_due=status_due, outbox_due=outbox_due, logger=self.log,
                             login=login, **common)
        await rotator.load()
        buckets = Buckets(state=state, signer=signer, device_id=self.device_id,
                          outbox_due=outbox_due, logger=self.log, **common)
        await buckets.load()
        downlink = Downlink(
            device_id=self.device_id, fed=self.fed, orchestrator_keys=keys,
            state=state, window=await state.replay_window(), models=models, tracker=tracker,
            tasks=tasks, outbox=outbox, settings=settings, shutdown=self._shutdown,
            status_due=status_due, outbox_due=outbox_due, exit_on_revoke=config.exit_on_revoke,
            tombstone=self.tombstone_path, logger=self.log, rotation=rotator, buckets=buckets,
            **common)
        session = self._session(downlink, reporter,
                                signal_all(status_due, outbox_due, rotator.wake, changed), login)
        keys.on_adopt = session.refresh_retained
        flusher = Flusher(outbox, session, self.topics.up(self.device_id, UpKind.UPDATES),
                          batch_entries=config.batch_entries, batch_bytes=config.batch_bytes,
                          ready=tracker.may_send_updates, wake=outbox_due, logger=self.log,
                          **common)
        heartbeat = Heartbeat(reporter, session=session, tracker=tracker, probe=self._probe,
                              settings=settings, shutdown=self._shutdown, status_due=status_due,
                              config=config, logger=self.log, **common)
        worker = Worker(
            tasks=tasks, tracker=tracker, models=models, signer=signer, session=session,
            probe=self._probe, offload=self._offload, shutdown=self._shutdown, pace=self._pace,
            outbox_due=outbox_due, data=data,
            feedback=ErrorFeedback(await state.residual()),
            eval_topic=self.topics.up(self.device_id, UpKind.EVAL), config=config,
            logger=self.log, train=train_update, buckets=buckets, **common)
        return _Parts(state, outbox, tracker, models, session, flusher, heartbeat, downlink,
                      worker, rotator, source, buckets)

    def _session(self, downlink: Downlink, reporter: Reporter,
                 on_connect: Callable[[], None], login: BrokerLogin) -> Session:
        b, c, topics = self.bundle, self.config, self.topics
        address = BrokerAddress(b.broker_host, b.broker_port, b.mqtt_username, b.mqtt_password,
                                c.client_id or f"fedmq-{self.device_id}", self._tls)
        return Session(
            # "model/#" matches "model" itself too: one filter for snapshot, delta and chunks
            # (two overlapping filters would deliver every model message twice)
            address, subscriptions=(topics.model_all, topics.down_all(self.device_id)),
            on_message=downlink.deliver, will_topic=topics.up(self.device_id, UpKind.STATUS),
            will=reporter.will, on_connect=on_connect, on_disconnect=self._changed.fire,
            link_up=self._probe.link_up, backoff=self._backoff, keepalive_s=c.keepalive_s,
            session_expiry_s=c.session_expiry_s, link_poll_s=c.link_poll_s,
            auth_retry_s=c.auth_retry_s, login=login, clock=self._clock,
            logger=self.log)
