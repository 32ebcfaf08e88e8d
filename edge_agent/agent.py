"""``Agent``: one edge device — enrollment, heartbeats, tasks, training, outbox delivery.

``async with Agent(bundle, data, state_path) as agent: await agent.run_until(stop_event)``.
Entering opens the state file and starts four named tasks in one TaskGroup:

- ``session``: the MQTT connection (``Session.run``), which hands every message to
  ``deliver`` — verification, replay window, then dispatch;
- ``heartbeat``: ``Enroll`` until enrolled, then ``Status`` on connect, on every state change
  and every ``heartbeat_s``;
- ``flusher``: sends due outbox entries in ``UpdateBatch``es whenever connected;
- ``worker``: runs tasks one at a time (training and encoding in a worker thread).

Leaving (or ``stop()``) publishes a retained offline status when it can, cancels the tasks and
closes the state file: one shutdown path. Several agents run in one process by entering
several ``Agent`` contexts; each logs as ``edge_agent.<device_id>``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
from nacl.signing import VerifyKey

from schemas import (
    Ack,
    AckOutcome,
    AgentState,
    Bundle,
    Control,
    ControlAction,
    DecodeError,
    Defer,
    Enroll,
    Enrolled,
    EnrollStatus,
    ErrorFeedback,
    EvalReport,
    FedmqError,
    Message,
    Reason,
    ReplayWindow,
    Status,
    Task,
    TaskAction,
    Thermal,
    Topics,
    UpKind,
    Verdict,
    check_header,
    decode_body,
    enroll_mac,
    message_type,
    pack,
    parse_topic,
    seal_key,
    unseal_key,
    verify,
)

from .backoff import Backoff, Sleep
from .config import AgentConfig
from .data import LocalData, split_holdout
from .errors import NotConnectedError, storage_full
from .flusher import Flusher
from .models import ORCHESTRATOR, ModelReceiver
from .outbox import Outbox, ResendPolicy
from .probes import DeviceProbe, DeviceState, SysfsProbe, training_blocked
from .session import BrokerAddress, Session
from .state import Enrollment, LocalState, StoredModel
from .trainer import ModelContractError, OrtModel
from .training import train_update

AGENT_VERSION = "fedmq-agent/0.1"
_DOWN_TYPES: tuple[type[Message], ...] = (Task, Defer, Ack, Control, Enrolled)
_GOODBYE_S = 2.0
_SHUTDOWN_S = 15.0
_LOOP_ERROR_PAUSE_S = 1.0
_RETRY_S = 0.2  # after a publish failed while the session still looked connected

T = TypeVar("T")


@dataclass(slots=True)
class AgentStats:
    """Counters for tests, the simulator and logs."""

    tasks_received: int = 0
    tasks_dropped: int = 0
    updates_built: int = 0
    batches_sent: int = 0
    entries_sent: int = 0
    acked: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicates: int = 0
    evaluations: int = 0
    statuses_sent: int = 0
    enrolls_sent: int = 0
    models_adopted: int = 0
    paused: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(frozen=True, slots=True)
class _Loaded:
    stored: StoredModel
    ort: OrtModel


class _Pulse:
    """Wakes every current waiter when fired (an Event that re-arms itself)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()


class Agent:
    """One device's agent (an async context manager; not re-entrant)."""

    def __init__(
        self,
        bundle: Bundle,
        data: LocalData,
        state_path: str | Path,
        *,
        config: AgentConfig | None = None,
        probe: DeviceProbe | None = None,
        clock: Callable[[], float] = time.time,
        backoff_sleep: Sleep = asyncio.sleep,
        backoff_rng: random.Random | None = None,
        executor: Executor | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        """
        Args:
            bundle: the enrollment bundle (identity, broker, pinned orchestrator key).
            data: the local data set; ``config.holdout`` of it is kept for evaluation.
            state_path: the agent's SQLite file (created 0600 on first boot).
            probe: device-state source; default ``SysfsProbe()``.
            clock: wall clock in seconds (message timestamps, deferrals, outbox times).
            backoff_sleep, backoff_rng: injected into the reconnect backoff.
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
        self._probe: DeviceProbe = probe if probe is not None else SysfsProbe()
        self._clock = clock
        self._executor = executor
        self._tls = tls_context
        self._orch_key = VerifyKey(bytes.fromhex(bundle.orchestrator_key))
        self._np_rng = np.random.default_rng(self.config.seed)
        self._noise_rng = np.random.default_rng()  # OS entropy: DP noise is never seeded
        if self.config.holdout > 0:
            self.train_data, self.holdout_data = split_holdout(
                data, self.config.holdout, np.random.default_rng(self.config.seed))
        else:
            self.train_data, self.holdout_data = data, data
        self._label_counts = _label_counts(self.train_data)
        self._backoff = Backoff(self.config.backoff_base_s, self.config.backoff_cap_s,
                                rng=backoff_rng, sleep=backoff_sleep)
        self._receiver = ModelReceiver(orchestrator_key=self._orch_key, fed=self.fed,
                                       clock=clock)
        self.stats = AgentStats()
        self.finished: str | None = None
        """Why the agent ended by itself (``revoked``, ``enrollment_rejected``), else None."""
        self.last_status: Status | None = None
        self.defer_until_ms = 0
        """Do not ask for work (idle heartbeat) before this wall-clock time."""
        self.step_time_ms: float | None = None
        self._stack = AsyncExitStack()
        self._state: LocalState | None = None
        self._outbox: Outbox | None = None
        self._session: Session | None = None
        self._flusher: Flusher | None = None
        self._main: asyncio.Task[None] | None = None
        self._window = ReplayWindow()
        self._feedback = ErrorFeedback()
        self._enrollment: Enrollment | None = None
        self._flags: dict[str, Any] = {}
        self._settings: dict[str, float] = {}
        self._model: _Loaded | None = None
        self._tasks: asyncio.Queue[Task] = asyncio.Queue(self.config.max_queued_tasks)
        self._busy_task = ""
        self._paused: tuple[str, float, Thermal] | None = None
        self._reported: tuple[AgentState, str] | None = None
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._hb_wake = asyncio.Event()
        self._model_pulse = _Pulse()
        self._pulse = _Pulse()

    # -- public view ----------------------------------------------------------------------------

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("the agent is not running")
        return self._outbox

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("the agent is not running")
        return self._session

    @property
    def flusher(self) -> Flusher:
        if self._flusher is None:
            raise RuntimeError("the agent is not running")
        return self._flusher

    @property
    def local_state(self) -> LocalState:
        if self._state is None:
            raise RuntimeError("the agent is not running")
        return self._state

    @property
    def model_version(self) -> int | None:
        return self._model.stored.version if self._model is not None else None

    @property
    def enrollment(self) -> Enrollment | None:
        return self._enrollment

    @property
    def state(self) -> tuple[AgentState, str]:
        """What the next heartbeat reports: ``(state, reason)``."""
        return self._current_state()

    async def wait_until(self, predicate: Callable[[Agent], bool], within: float) -> None:
        """Wait until ``predicate(agent)`` holds (re-checked on every event), or raise
        ``TimeoutError`` after ``within`` seconds."""
        async with asyncio.timeout(within):
            while not predicate(self):
                await self._pulse.wait()

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        if self._main is not None:
            raise RuntimeError("an Agent runs once")
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        self._main = asyncio.create_task(self._supervise(), name=f"agent:{self.device_id}")
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
        self._stopping = True
        self._stop_requested.set()
        self._pulse.fire()

    async def run_until(self, stop: asyncio.Event | None = None) -> str | None:
        """Run until ``stop`` is set, ``stop()`` is called, or the agent ends by itself
        (returns ``finished``). A failure of one of the agent's tasks is raised here."""
        assert self._main is not None, "enter the agent first"
        waiters: set[asyncio.Future[Any]] = {self._main,
                                             asyncio.ensure_future(self._stop_requested.wait())}
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

    async def _open(self) -> None:
        state = LocalState(self._state_path, device_id=self.device_id, fed=self.fed)
        self._state = await self._stack.enter_async_context(state)
        self._outbox = Outbox(state, ResendPolicy(int(self.config.ack_timeout_s * 1000),
                                                  int(self.config.max_ack_timeout_s * 1000)))
        self._window = await state.replay_window()
        self._feedback = ErrorFeedback(await state.residual())
        self._enrollment = await state.enrollment()
        self._flags = dict(await state.get("flags", {}))
        self._settings = dict(await state.get("settings", {}))
        self.defer_until_ms = int(await state.get("defer_until_ms", 0))
        stored = await state.load_model()
        if stored is not None:
            try:
                self._model = _Loaded(stored, await self._build_ort(stored.graphs))
            except ModelContractError as exc:
                self.log.error("stored model v%d is unusable (%s); waiting for a new one",
                               stored.version, exc)
        self.log.info("state %s: seq %d, outbox %d, model %s, enrollment %s", state.path,
                      state.last_seq, len(self.outbox), self.model_version,
                      self._enrollment.status.value if self._enrollment else "none")
        self._session = Session(
            BrokerAddress(self.bundle.broker_host, self.bundle.broker_port,
                          self.bundle.mqtt_username, self.bundle.mqtt_password,
                          self.config.client_id or f"fedmq-{self.device_id}", self._tls),
            # "model/#" matches "model" itself too: one filter for snapshot, delta and chunks
            # (two overlapping filters would deliver every model message twice)
            subscriptions=(self.topics.model_all, self.topics.down_all(self.device_id)),
            on_message=self.deliver,
            will_topic=self.topics.up(self.device_id, UpKind.STATUS),
            will=self._will,
            on_connect=self._on_connect,
            on_disconnect=self._pulse.fire,
            link_up=self._link_up,
            backoff=self._backoff,
            keepalive_s=self.config.keepalive_s,
            session_expiry_s=self.config.session_expiry_s,
            link_poll_s=self.config.link_poll_s,
            logger=self.log,
        )
        self._flusher = Flusher(
            self.outbox, self._session, self.topics.up(self.device_id, UpKind.UPDATES),
            batch_entries=self.config.batch_entries, batch_bytes=self.config.batch_bytes,
            now_ms=self._now_ms, ready=self._may_send_updates, on_sent=self._on_sent,
            logger=self.log)

    async def _supervise(self) -> None:
        assert self._session is not None
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("heartbeat", self._heartbeat_loop),
            ("flusher", self.flusher.run),
            ("worker", self._worker_loop),
        ]
        try:
            async with asyncio.TaskGroup() as group:
                session = group.create_task(self._guarded("session", self._session.run),
                                            name=f"{self.device_id}:session")
                workers = [group.create_task(self._guarded(name, fn),
                                             name=f"{self.device_id}:{name}")
                           for name, fn in loops]
                await self._stop_requested.wait()
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                # the goodbye is the last status: nothing else may publish after it
                await self._goodbye()
                session.cancel()
        finally:
            self._pulse.fire()

    async def _guarded(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop forever: an unexpected error is logged and the loop restarted, so one
        bad moment (a full disk, a bug on odd input) does not take the device offline."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if storage_full(exc):  # an operator problem, not a bug: one clear line
                    self.log.error("%s: local storage is full (%s); nothing is lost, "
                                   "retrying in %ss", name, exc, _LOOP_ERROR_PAUSE_S)
                else:
                    self.log.exception("%s loop failed; restarting it", name)
                await asyncio.sleep(_LOOP_ERROR_PAUSE_S)

    async def _goodbye(self) -> None:
        """A retained offline status, so the fleet view does not wait for the Last Will."""
        if not self.session.connected or not self._enrolled():
            return
        try:
            async with asyncio.timeout(_GOODBYE_S):
                await self._publish_status(AgentState.OFFLINE, self.finished or "shutdown")
        except (TimeoutError, NotConnectedError, FedmqError) as exc:
            self.log.info("no offline status sent: %s", exc)

    def _finish(self, reason: str) -> None:
        self.finished = reason
        self.stop()

    # -- small helpers --------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def _build_ort(self, graphs: dict[str, bytes]) -> OrtModel:
        return await self._in_thread(OrtModel, graphs,
                                     intra_op_threads=self.config.intra_op_threads)

    async def _read_probe(self) -> DeviceState:
        return await self._in_thread(self._probe.read)

    async def _link_up(self) -> bool:
        return (await self._read_probe()).link_up

    def _on_connect(self) -> None:
        self._hb_wake.set()
        self.flusher.wake()
        self._pulse.fire()

    def _may_send_updates(self) -> bool:
        e = self._enrollment
        return e is not None and e.status is EnrollStatus.ACTIVE

    def _on_sent(self, seqs: list[int]) -> None:
        self.stats.batches_sent += 1
        self.stats.entries_sent += len(seqs)
        self._pulse.fire()

    def _enrolled(self) -> bool:
        e = self._enrollment
        return e is not None and e.status in (EnrollStatus.ACTIVE, EnrollStatus.AWAITING_APPROVAL)

    def _heartbeat_s(self) -> float:
        # the orchestrator's latest reconfigure wins over the local override
        if "heartbeat_s" in self._settings:
            return self._settings["heartbeat_s"]
        if self.config.heartbeat_s is not None:
            return self.config.heartbeat_s
        return self._enrollment.heartbeat_s if self._enrollment is not None else 10.0

    def _stop_reason(self) -> str | None:
        if self._flags.get("revoked"):
            return "revoked"
        if self._flags.get("isolated"):
            return "isolated"
        if self._flags.get("federation_stopped"):
            return Reason.FEDERATION_STOPPED.value
        if self._model is not None and self._model.stored.stopped:
            return Reason.FEDERATION_STOPPED.value
        return None

    def _current_state(self) -> tuple[AgentState, str]:
        stopped = self._stop_reason()
        if stopped is not None:
            return AgentState.STOPPED, stopped
        if self._busy_task:
            return AgentState.TRAINING, ""
        if self._paused is not None:
            return AgentState.PAUSED, self._paused[0]
        if self._now_ms() < self.defer_until_ms:
            return AgentState.DEFERRED, "deferred"
        if self._enrollment is not None and self._enrollment.status is not EnrollStatus.ACTIVE:
            return AgentState.IDLE, self._enrollment.status.value
        return AgentState.IDLE, ""

    def _touch(self) -> None:
        """Something changed: publish a status now if the reported state moved."""
        if self._current_state() != self._reported:
            self._hb_wake.set()
        self._pulse.fire()

    async def _set_flag(self, name: str, value: Any) -> None:
        if value is None:
            self._flags.pop(name, None)
        else:
            self._flags[name] = value
        await self.local_state.put("flags", self._flags)
        self._touch()

    def _pack(self, message: Message, seq: int, *, seal: bool = False) -> bytes:
        return pack(message, key=self.local_state.signing_key, fed=self.fed,
                    sender=self.device_id, seq=seq, ts_ms=self._now_ms(),
                    seal_to=seal_key(self._orch_key) if seal else None)

    async def _signed(self, message: Message) -> bytes:
        seq = await self.local_state.reserve_seq()
        return self._pack(message, seq)

    # -- heartbeat and enrollment ---------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await self.session.wait_connected()
            self._hb_wake.clear()
            e = self._enrollment
            if e is not None and e.status is EnrollStatus.REJECTED:
                self._finish("enrollment_rejected")
                return
            try:
                if e is None:
                    await self._send_enroll()
                else:
                    await self._refresh_pause()
                    await self._publish_status()
            except NotConnectedError:
                await asyncio.sleep(_RETRY_S)
                continue
            if e is None:
                # re-send only on the retry interval (other events must not spam enrolls)
                with contextlib.suppress(TimeoutError):
                    await self.wait_until(lambda a: a._enrollment is not None,
                                          self.config.enroll_retry_s)
                continue
            wait = self._heartbeat_s()
            if self.defer_until_ms > self._now_ms():
                # wake exactly when the deferral ends: that idle status is the next ask
                wait = min(wait, (self.defer_until_ms - self._now_ms()) / 1000 + 0.001)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._hb_wake.wait()

    async def _send_enroll(self) -> None:
        state = self.local_state
        public = bytes(state.signing_key.verify_key)
        mac = enroll_mac(bytes.fromhex(self.bundle.enroll_secret), fed=self.fed,
                         device_id=self.device_id, public_key=public)
        info = {"device_class": self.config.device_class, "num_samples": len(self.train_data)}
        message = Enroll(self.device_id, public, mac, AGENT_VERSION, info)
        await self.session.publish(self.topics.up(self.device_id, UpKind.ENROLL),
                                   await self._signed(message), qos=1)
        self.stats.enrolls_sent += 1
        self.log.info("enroll sent (key %s)", public.hex()[:16])

    def _status(self, state: AgentState, reason: str, device: DeviceState) -> Status:
        return Status(
            state=state,
            battery_pct=device.battery_pct,
            charging=device.charging,
            thermal=device.thermal,
            metered=device.metered,
            free_mem_mb=device.free_mem_mb,
            cores=device.cores,
            step_time_ms=self.step_time_ms,
            model_version=self.model_version,
            outbox_len=len(self.outbox),
            num_samples=len(self.train_data),
            label_counts=self._label_counts,
            reason=reason,
            busy_task=self._busy_task,
        )

    async def _publish_status(self, state: AgentState | None = None, reason: str = "") -> None:
        if state is None:
            state, reason = self._current_state()
        status = self._status(state, reason, await self._read_probe())
        await self.session.publish(self.topics.up(self.device_id, UpKind.STATUS),
                                   await self._signed(status), qos=1, retain=True)
        self._reported = (state, reason)
        self.last_status = status
        self.stats.statuses_sent += 1
        self._pulse.fire()

    async def _will(self) -> bytes:
        """The Last Will: a pre-signed offline status (its seq is reserved like any other)."""
        status = self._status(AgentState.OFFLINE, "connection_lost", DeviceState())
        return await self._signed(status)

    # -- receiving ------------------------------------------------------------------------------

    async def deliver(self, topic: str, payload: bytes) -> None:
        """Handle one message as if it had arrived on ``topic``. Never raises for bad input:
        anything forged or malformed is refused, logged and counted in ``stats.refused``."""
        try:
            parsed = parse_topic(topic)
            if parsed.fed != self.fed:
                raise FedmqError(Reason.WRONG_FEDERATION, f"topic of federation {parsed.fed!r}")
            if parsed.area == "model":
                if payload:  # an empty retained payload clears a superseded chunk
                    await self._on_model(parsed.kind or "", payload, topic)
            elif parsed.area == "down" and parsed.device == self.device_id:
                await self._on_down(payload)
            else:
                raise DecodeError(Reason.BAD_TOPIC, "not a topic for this device")
        except FedmqError as exc:
            self._refuse(topic, exc.reason.value, str(exc))
        except (ModelContractError, ValueError) as exc:
            self._refuse(topic, Reason.INVALID_FIELD.value, str(exc))

    def _refuse(self, topic: str, reason: str, detail: str) -> None:
        self.stats.refused[reason] += 1
        self.log.warning("refused message on %s: %s", topic, detail)
        self._pulse.fire()

    async def _on_model(self, kind: str, payload: bytes, topic: str) -> None:
        current = self._model.stored if self._model is not None else None
        sha = topic.rsplit("/", 1)[-1] if kind == "chunk" else None
        received = await self._in_thread(self._receiver.handle, kind, payload, current, sha)
        if received.model is None:
            self.log.debug("model message on %s: %s", topic, received.note)
            return
        await self._adopt(received.model, received.note)

    async def _adopt(self, model: StoredModel, note: str) -> None:
        old = self._model
        if old is not None and old.stored.graphs == model.graphs:
            ort = old.ort
        else:
            ort = await self._build_ort(model.graphs)  # ModelContractError → refused
        await self.local_state.save_model(model)
        self._model = _Loaded(model, ort)
        self.stats.models_adopted += 1
        self.log.info("model %s adopted%s", note, " (federation stopped)" if model.stopped else "")
        self._model_pulse.fire()
        self._hb_wake.set()
        self._touch()

    async def _on_down(self, payload: bytes) -> None:
        opened = verify(payload, self._orch_key)
        header = opened.header
        check_header(header, fed=self.fed, sender=ORCHESTRATOR, now_ms=self._now_ms(),
                     recipient=self.device_id)
        cls = message_type(opened)
        if cls not in _DOWN_TYPES:
            raise DecodeError(Reason.WRONG_TYPE, f"{header.type!r} is not sent to devices")
        verdict = self._window.classify(header.seq)
        if verdict is Verdict.DUPLICATE:
            self.stats.duplicates += 1
            self.log.debug("duplicate %s seq %d ignored", header.type, header.seq)
            return
        if verdict is not Verdict.FRESH:
            raise FedmqError(Reason.REPLAY, f"{header.type} seq {header.seq} is below the window")
        # nothing downstream is sealed today; opening with our key costs nothing if it is
        message = decode_body(opened, cls, unseal=unseal_key(self.local_state.signing_key))
        self._window.mark(header.seq)
        await self.local_state.save_replay_window(self._window)
        if isinstance(message, Task):
            self._on_task(message)
        elif isinstance(message, Defer):
            await self._on_defer(message)
        elif isinstance(message, Ack):
            await self._on_ack(message)
        elif isinstance(message, Control):
            await self._on_control(message)
        elif isinstance(message, Enrolled):
            await self._on_enrolled(message)

    def _on_task(self, task: Task) -> None:
        self.stats.tasks_received += 1
        try:
            self._tasks.put_nowait(task)
        except asyncio.QueueFull:
            self.stats.tasks_dropped += 1
            self.log.warning("task %s dropped: %d tasks already queued", task.task_id,
                             self._tasks.qsize())
        self._pulse.fire()

    async def _on_defer(self, defer: Defer) -> None:
        self.defer_until_ms = self._now_ms() + max(0, defer.retry_after_ms)
        await self.local_state.put("defer_until_ms", self.defer_until_ms)
        self.log.info("deferred for %d ms%s", defer.retry_after_ms,
                      f" ({defer.reason})" if defer.reason else "")
        self._touch()

    async def _on_ack(self, ack: Ack) -> None:
        removed = await self.outbox.ack(e.seq for e in ack.entries)
        for entry in ack.entries:
            self.stats.acked[entry.outcome.value] += 1
            if entry.outcome is AckOutcome.REJECTED:
                self.log.warning("update seq %d rejected: %s", entry.seq, entry.reason or "?")
        self.log.debug("ack for %d seq(s), %d removed, %d left", len(ack.entries), removed,
                       len(self.outbox))
        self._pulse.fire()

    async def _on_control(self, control: Control) -> None:
        action = control.action
        self.log.info("control %s%s", action.value, f": {control.reason}" if control.reason else "")
        if action is ControlAction.REVOKE:
            await self._set_flag("revoked", control.reason or "revoked")
            if self.config.exit_on_revoke:
                self._finish("revoked")
        elif action is ControlAction.ISOLATE:
            await self._set_flag("isolated", control.reason or "isolated")
        elif action is ControlAction.REINSTATE:
            await self._set_flag("isolated", None)
        elif action is ControlAction.STOP:
            await self._set_flag("federation_stopped", True)
        elif action is ControlAction.RESUME:
            await self._set_flag("federation_stopped", None)
        elif action is ControlAction.RECONFIGURE:
            await self._reconfigure(control.params)
        else:
            self.log.warning("control %s is not supported by %s; ignored", action.value,
                             AGENT_VERSION)

    async def _reconfigure(self, params: dict[str, Any]) -> None:
        for name, value in params.items():
            if name == "heartbeat_s" and isinstance(value, int | float) and value > 0:
                self._settings["heartbeat_s"] = float(value)
            else:
                self.log.warning("reconfigure: ignoring %s=%r", name, value)
        await self.local_state.put("settings", self._settings)
        self._hb_wake.set()

    async def _on_enrolled(self, enrolled: Enrolled) -> None:
        if enrolled.device_id != self.device_id:
            raise FedmqError(Reason.SENDER_MISMATCH, f"enrolled for {enrolled.device_id!r}")
        self._enrollment = Enrollment(enrolled.status, enrolled.heartbeat_s, enrolled.reason)
        await self.local_state.set_enrollment(self._enrollment)
        if enrolled.status is EnrollStatus.REJECTED:
            self.log.error("enrollment rejected by the orchestrator: %s",
                           enrolled.reason or "no reason given")
            self._finish("enrollment_rejected")
        else:
            self.log.info("enrollment %s (heartbeat %ss)", enrolled.status.value,
                          enrolled.heartbeat_s)
        self._hb_wake.set()
        self.flusher.wake()
        self._touch()

    # -- the worker -----------------------------------------------------------------------------

    async def _worker_loop(self) -> None:
        while True:
            task = await self._tasks.get()
            try:
                await self._run_task(task)
            finally:
                self._busy_task = ""
                self._touch()

    async def _run_task(self, task: Task) -> None:
        stopped = self._stop_reason()
        if stopped is not None:
            self.log.info("task %s ignored: %s", task.task_id, stopped)
            return
        if task.deadline_ms and self._now_ms() > task.deadline_ms:
            self.log.info("task %s ignored: its deadline has passed", task.task_id)
            return
        loaded = await self._wait_for_model(task.model_version)
        if loaded is None:
            self.log.warning("task %s ignored: model v%d did not arrive within %ss (have %s)",
                             task.task_id, task.model_version, self.config.model_wait_s,
                             self.model_version)
            return
        if task.action is TaskAction.EVALUATE:
            await self._evaluate(task, loaded)
        else:
            await self._train(task, loaded)

    async def _wait_for_model(self, version: int) -> _Loaded | None:
        try:
            async with asyncio.timeout(self.config.model_wait_s):
                while self._model is None or self._model.stored.version < version:
                    await self._model_pulse.wait()
        except TimeoutError:
            return None
        return self._model

    def _pause(self, why: str, task: Task) -> None:
        self._paused = (why, task.min_battery_pct, task.max_thermal)
        self.stats.paused[why] += 1
        self._touch()

    async def _refresh_pause(self) -> None:
        """A pause ends when the conditions that caused it are met again."""
        if self._paused is None:
            return
        _, min_battery, max_thermal = self._paused
        if training_blocked(await self._read_probe(), min_battery, max_thermal) is None:
            self.log.info("conditions recovered; no longer paused")
            self._paused = None
            self._touch()

    async def _train(self, task: Task, loaded: _Loaded) -> None:
        ort, base = loaded.ort, loaded.stored
        why = training_blocked(await self._read_probe(), task.min_battery_pct, task.max_thermal)
        if why is not None:
            self.log.info("task %s not trained: %s", task.task_id, why)
            self._pause(why, task)
            return
        self._paused = None
        if ort.supervised and self.train_data.y is None:
            self.log.error("task %s not trained: the model needs labels, the data has none",
                           task.task_id)
            return
        self._busy_task = task.task_id
        self._touch()
        cause: list[str] = []
        self._probe.set_training(True)
        try:
            trained = await self._in_thread(
                train_update, ort, base, task, self.train_data, feedback=self._feedback,
                rng=self._np_rng, noise_rng=self._noise_rng,
                should_stop=self._stop_check(task, cause), device_class=self.config.device_class)
            await self._simulate_slowness(trained.result.steps, trained.train_ms)
        finally:
            self._probe.set_training(False)
        if cause and cause[0] not in ("battery_low", "overheated"):
            self.log.info("task %s abandoned: %s", task.task_id, cause[0])
            return
        if cause:
            self.log.info("task %s stopped early after %d steps: %s", task.task_id,
                          trained.result.steps, cause[0])
            self._pause(cause[0], task)
        if trained.step_time_ms is not None:
            self.step_time_ms = max(trained.step_time_ms, self.config.simulated_step_ms)
        if trained.update is None:
            self.log.warning("task %s: nothing to send (%s)", task.task_id, trained.note)
            return
        seq = await self.local_state.reserve_seq()
        envelope = await self._in_thread(self._pack, trained.update, seq, seal=task.seal)
        if len(envelope) > self.config.batch_bytes:
            self.log.error("task %s: update of %d bytes exceeds the %d-byte batch limit; "
                           "use a compressing codec", task.task_id, len(envelope),
                           self.config.batch_bytes)
            return
        await self.outbox.put(seq, envelope, created_ms=self._now_ms(),
                              residual=trained.feedback.residual)
        self._feedback = trained.feedback
        self.stats.updates_built += 1
        self.log.info("task %s: update seq %d (%d steps, loss %.4f, %d bytes) in the outbox",
                      task.task_id, seq, trained.result.steps, trained.result.mean_loss,
                      len(envelope))
        self.flusher.wake()
        self._pulse.fire()

    async def _simulate_slowness(self, steps: int, train_ms: float) -> None:
        """A simulated slower device (``config.simulated_step_ms``) takes that long per step."""
        target_ms = steps * self.config.simulated_step_ms
        if target_ms > train_ms:
            await asyncio.sleep((target_ms - train_ms) / 1000)

    def _stop_check(self, task: Task, cause: list[str]) -> Callable[[], bool]:
        """``should_stop`` for the training thread: shutdown, a stop order, or the task's
        conditions failing (the probe is read at most every ``probe_interval_s``)."""
        probe, interval = self._probe, self.config.probe_interval_s
        last_check = [time.monotonic()]

        def should_stop() -> bool:
            if self._stopping or self._stop_reason() is not None:
                cause.append("shutdown" if self._stopping else "stopped")
                return True
            now = time.monotonic()
            if now - last_check[0] < interval:
                return False
            last_check[0] = now
            why = training_blocked(probe.read(), task.min_battery_pct, task.max_thermal)
            if why is not None:
                cause.append(why)
                return True
            return False

        return should_stop

    async def _evaluate(self, task: Task, loaded: _Loaded) -> None:
        ort = loaded.ort
        data = self.holdout_data
        if ort.supervised and data.y is None:
            self.log.error("task %s not evaluated: the model needs labels", task.task_id)
            return
        metrics = await self._in_thread(ort.evaluate, loaded.stored.params, data.X,
                                        data.y if ort.supervised else None)
        report = EvalReport(task.task_id, loaded.stored.version, len(data), metrics["loss"],
                            metrics["metric"], "accuracy" if ort.supervised else "mse")
        try:
            async with asyncio.timeout(self.config.publish_wait_s):
                while True:
                    await self.session.wait_connected()
                    try:
                        await self.session.publish(self.topics.up(self.device_id, UpKind.EVAL),
                                                   await self._signed(report), qos=1)
                        break
                    except NotConnectedError:
                        await asyncio.sleep(_RETRY_S)
        except TimeoutError:
            self.log.warning("task %s: evaluation report dropped (no connection)", task.task_id)
            return
        self.stats.evaluations += 1
        self.log.info("task %s: evaluated v%d on %d samples: loss %.4f, metric %.4f",
                      task.task_id, loaded.stored.version, len(data), report.loss, report.metric)
        self._pulse.fire()


def _label_counts(data: LocalData) -> dict[str, int]:
    if data.y is None:
        return {}
    labels, counts = np.unique(data.y, return_counts=True)
    return {str(int(k)): int(c) for k, c in zip(labels, counts, strict=True)}
