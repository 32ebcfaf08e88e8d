"""The worker: runs tasks one at a time — training (in a worker thread) and evaluation.

A task is ignored while the device is stopped, after its deadline, or when the model it names
does not arrive in time. Training starts only if the task's conditions hold (battery floor,
heat); ``StopCheck`` ends it early on shutdown, a stop order, or conditions failing mid-run
(then the device pauses, and the partial work is still sent). The update goes through the
``Signer`` into the outbox; only once it is committed does the worker adopt the new
error-feedback residual. An evaluation report is published directly, within
``publish_wait_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np

from schemas import ErrorFeedback, EvalReport, Task, TaskAction

from .activity import Activity, Pause
from .buckets import Buckets
from .clock import Clock, wait_for, wall_ms
from .config import AgentConfig
from .data import LocalData, TrainingSet
from .errors import DataError, NotConnectedError, OversizedUpdateError
from .keeper import LoadedModel, ModelKeeper
from .probes import DeviceProbe, training_blocked
from .scoring import model_input, noisy_score_histogram
from .session import PUBLISH_RETRY_S, Session
from .shared import AgentStats, Offload, Pace, ProbeReader, Pulse, Shutdown, run_to_end
from .signer import Signer
from .tracker import ActivityTracker
from .training import TrainedUpdate, train_update

__all__ = ["PAUSE_CAUSES", "StopCheck", "TrainFn", "Worker"]

PAUSE_CAUSES = ("battery_low", "overheated")
"""Why training may stop early and still send what it did (then the device pauses)."""

TrainFn = Callable[..., TrainedUpdate]
"""``train_update``'s signature: the synchronous training run, handed to the worker."""


class _ActivitySource(Protocol):
    @property
    def current(self) -> Activity: ...


class StopCheck:
    """``should_stop`` for the training thread: shutdown, a stop order, or the task's
    conditions failing. The probe is read at most every ``interval_s`` of the clock's
    monotonic time; ``cause`` says why training was stopped."""

    def __init__(self, task: Task, *, shutdown: Shutdown, activity: _ActivitySource,
                 probe: DeviceProbe, clock: Clock, interval_s: float) -> None:
        self._task = task
        self._shutdown = shutdown
        self._activity = activity
        self._probe = probe
        self._clock = clock
        self._interval_s = interval_s
        self._last_probe = clock.monotonic()
        self.cause: str | None = None

    def __call__(self) -> bool:
        stopping = self._shutdown.stopping
        if stopping or self._activity.current.stop_reason is not None:
            self.cause = "shutdown" if stopping else "stopped"
            return True
        now = self._clock.monotonic()
        if now - self._last_probe < self._interval_s:
            return False
        self._last_probe = now
        why = training_blocked(self._probe.read(), self._task.min_battery_pct,
                               self._task.max_thermal)
        if why is not None:
            self.cause = why
            return True
        return False


class Worker:
    def __init__(self, *, tasks: asyncio.Queue[Task], tracker: ActivityTracker,
                 models: ModelKeeper, signer: Signer, session: Session, probe: ProbeReader,
                 offload: Offload, clock: Clock, shutdown: Shutdown, stats: AgentStats,
                 changed: Pulse, pace: Pace, outbox_due: asyncio.Event,
                 data: TrainingSet, feedback: ErrorFeedback,
                 eval_topic: str, config: AgentConfig, logger: logging.Logger,
                 train: TrainFn = train_update, buckets: Buckets | None = None) -> None:
        self._tasks = tasks
        self._tracker = tracker
        self._models = models
        self._signer = signer
        self._session = session
        self._probe = probe
        self._offload = offload
        self._clock = clock
        self._shutdown = shutdown
        self._stats = stats
        self._changed = changed
        self._pace = pace
        self._outbox_due = outbox_due
        self._data = data
        self._feedback = feedback
        self._eval_topic = eval_topic
        self._config = config
        self._log = logger
        self._train_fn = train
        self._buckets = buckets
        self._rng = np.random.default_rng(config.seed)
        self._noise_rng = np.random.default_rng()  # OS entropy: DP noise is never seeded

    async def run(self) -> None:
        while True:
            task = await self._tasks.get()
            try:
                await self._run_task(task)
            finally:
                activity = self._tracker.current
                if activity.training:
                    self._tracker.set(activity.on_training_ended())
                else:
                    self._tracker.touch()

    async def _run_task(self, task: Task) -> None:
        stopped = self._tracker.current.stop_reason
        if stopped is not None:
            self._log.info("task %s ignored: %s", task.task_id, stopped)
            return
        if task.deadline_ms and wall_ms(self._clock) > task.deadline_ms:
            self._log.info("task %s ignored: its deadline has passed", task.task_id)
            return
        loaded = await self._models.wait_for_version(task.model_version,
                                                     self._config.model_wait_s)
        if loaded is None:
            self._log.warning("task %s ignored: model v%d did not arrive within %ss (have %s)",
                              task.task_id, task.model_version, self._config.model_wait_s,
                              self._models.version)
            return
        if task.action is TaskAction.EVALUATE:
            await self._evaluate(task, loaded)
        else:
            await self._train(task, loaded)

    def _pause(self, why: str, task: Task) -> None:
        self._stats.paused[why] += 1
        self._tracker.set(self._tracker.current.on_pause(
            Pause(why, task.min_battery_pct, task.max_thermal)))

    # -- training ------------------------------------------------------------------------------

    async def _train(self, task: Task, loaded: LoadedModel) -> None:
        why = training_blocked(await self._probe.read(), task.min_battery_pct, task.max_thermal)
        if why is not None:
            self._log.info("task %s not trained: %s", task.task_id, why)
            self._pause(why, task)
            return
        self._tracker.set(self._tracker.current.on_conditions_met())
        train_data = self._model_input(task, self._data.train, loaded)  # the window as it is
        if train_data is None:  # now; it may slide meanwhile
            return
        if len(train_data) == 0:
            self._log.warning("task %s not trained: no local data yet", task.task_id)
            return
        if loaded.ort.supervised and train_data.y is None:
            self._log.error("task %s not trained: the model needs labels, the data has none",
                            task.task_id)
            return
        if task.bucket is not None and not await self._join(task):
            return
        self._tracker.set(self._tracker.current.on_training_started(task.task_id))
        check = StopCheck(task, shutdown=self._shutdown, activity=self._tracker,
                          probe=self._probe.probe, clock=self._clock,
                          interval_s=self._config.probe_interval_s)
        trained = await self._run_training(task, loaded, check, train_data)
        if check.cause is not None and check.cause not in PAUSE_CAUSES:
            self._log.info("task %s abandoned: %s", task.task_id, check.cause)
            return
        if check.cause is not None:
            self._log.info("task %s stopped early after %d steps: %s", task.task_id,
                           trained.result.steps, check.cause)
            self._pause(check.cause, task)
        if trained.step_time_ms is not None:
            self._pace.step_time_ms = max(trained.step_time_ms, self._config.simulated_step_ms)
        if trained.update is None:
            self._log.warning("task %s: nothing to send (%s)", task.task_id, trained.note)
            return
        if task.bucket is not None and self._buckets is not None:
            if await run_to_end(self._buckets.submit(task, trained)):
                self._feedback = trained.feedback
            return
        await self._enqueue(task, trained)

    async def _join(self, task: Task) -> bool:
        """Deal the bucket's shares before training (False: not this time)."""
        if self._buckets is None:
            self._log.error("task %s ignored: secure buckets are not set up", task.task_id)
            return False
        if not await run_to_end(self._buckets.join(task)):
            self._log.info("task %s ignored: already in its bucket", task.task_id)
            return False
        return True

    async def _run_training(self, task: Task, loaded: LoadedModel, check: StopCheck,
                            data: LocalData) -> TrainedUpdate:
        probe = self._probe.probe
        probe.set_training(True)
        try:
            trained = await self._offload.run(
                self._train_fn, loaded.ort, loaded.stored, task, data,
                feedback=self._feedback, rng=self._rng, noise_rng=self._noise_rng,
                should_stop=check, device_class=self._config.device_class)
            await self._simulate_slowness(trained.result.steps, trained.train_ms)
        finally:
            probe.set_training(False)
        return trained

    async def _simulate_slowness(self, steps: int, train_ms: float) -> None:
        """A simulated slower device (``config.simulated_step_ms``) takes that long per step."""
        target_ms = steps * self._config.simulated_step_ms
        if target_ms > train_ms:
            await self._clock.sleep((target_ms - train_ms) / 1000)

    async def _enqueue(self, task: Task, trained: TrainedUpdate) -> None:
        try:
            seq, size = await run_to_end(self._commit_update(task, trained))
        except OversizedUpdateError as exc:
            self._log.error("task %s: %s", task.task_id, exc)
            return
        self._log.info("task %s: update seq %d (%d steps, loss %.4f, %d bytes) in the outbox",
                       task.task_id, seq, trained.result.steps, trained.result.mean_loss, size)
        self._outbox_due.set()
        self._changed.fire()

    async def _commit_update(self, task: Task, trained: TrainedUpdate) -> tuple[int, int]:
        """Into the outbox, and counted: both or (on an oversized update) neither."""
        assert trained.update is not None
        seq, size = await self._signer.enqueue(trained.update, seal=task.seal,
                                               residual=trained.feedback.residual)
        self._feedback = trained.feedback
        self._stats.updates_built += 1
        return seq, size

    # -- evaluation ----------------------------------------------------------------------------

    def _model_input(self, task: Task, data: LocalData, loaded: LoadedModel) -> LocalData | None:
        if loaded.stored.annex.wants_stats and task.action is TaskAction.TRAIN:
            self._log.warning("task %s ignored: model v%d still waits for the federation's "
                              "standardisation", task.task_id, loaded.stored.version)
            return None
        try:
            return model_input(data, loaded.stored.annex)
        except DataError as exc:
            self._log.error("task %s ignored: %s", task.task_id, exc)
            return None

    async def _evaluate(self, task: Task, loaded: LoadedModel) -> None:
        ort, data = loaded.ort, self._model_input(task, self._data.holdout, loaded)
        if data is None:
            return
        if len(data) == 0:
            self._log.warning("task %s not evaluated: no held-out data yet", task.task_id)
            return
        if ort.supervised and data.y is None:
            self._log.error("task %s not evaluated: the model needs labels", task.task_id)
            return
        metrics = await self._offload.run(ort.evaluate, loaded.stored.params, data.X,
                                          data.y if ort.supervised else None)
        hist = await self._offload.run(noisy_score_histogram, ort, loaded.stored.params, data.X,
                                       task.score_noise)
        report = EvalReport(task.task_id, loaded.stored.version, len(data), metrics["loss"],
                            metrics["metric"], "accuracy" if ort.supervised else "mse",
                            score_hist=hist)
        try:
            await wait_for(self._clock, self._publish(report), self._config.publish_wait_s)
        except TimeoutError:
            self._log.warning("task %s: evaluation report dropped (no connection)",
                              task.task_id)
            return
        self._stats.evaluations += 1
        self._log.info("task %s: evaluated v%d on %d samples: loss %.4f, metric %.4f",
                       task.task_id, loaded.stored.version, len(data), report.loss,
                       report.metric)
        self._changed.fire()

    async def _publish(self, report: EvalReport) -> None:
        while True:
            await self._session.wait_connected()
            try:
                await self._session.publish(self._eval_topic, await self._signer.sign(report),
                                            qos=1)
                return
            except NotConnectedError:
                await self._clock.sleep(PUBLISH_RETRY_S)
