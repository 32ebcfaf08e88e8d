"""The heartbeat: ``Enroll`` until enrolled, then ``Status`` on connect, on every change of the
reported state and every ``heartbeat_s`` — and, while deferred, exactly when the deferral ends
(that idle status is the device's next ask for work).

It also signs the Last Will (an offline status the broker publishes if the device vanishes)
and the goodbye (the same status, sent on a clean shutdown so the fleet view need not wait for
the broker). All waits run on the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from schemas import AgentState, Enroll, FedmqError, Status, Topics, UpKind, enroll_mac
from schemas.annex import FeatureStats

from .clock import Clock, wait_for, wall_ms
from .config import AGENT_VERSION, AgentConfig
from .data import TrainingSet, label_counts
from .errors import NotConnectedError
from .keeper import ModelKeeper
from .outbox import Outbox
from .probes import DeviceState, training_blocked
from .session import PUBLISH_RETRY_S, Session
from .shared import AgentStats, Pace, ProbeReader, Pulse, Settings, Shutdown
from .signer import Signer
from .tracker import ActivityTracker

__all__ = ["Heartbeat", "Profile", "Reporter"]

_GOODBYE_S = 2.0  # real time: bounds a publish at shutdown
_DEFAULT_HEARTBEAT_S = 10.0


@dataclass(frozen=True, slots=True)
class Profile:
    """What the device says about itself in its ``Enroll`` and every ``Status``; the size and
    label counts are read from its training set each time (a sliding window changes)."""

    device_id: str
    topics: Topics
    enroll_secret: bytes
    device_class: str
    data: TrainingSet

    @classmethod
    def of(cls, device_id: str, topics: Topics, data: TrainingSet, *, enroll_secret: bytes,
           device_class: str) -> Profile:
        """The profile of a device training on ``data.train``."""
        return cls(device_id, topics, enroll_secret, device_class, data)

    @property
    def num_samples(self) -> int:
        return len(self.data.train)

    @property
    def label_counts(self) -> dict[str, int]:
        return label_counts(self.data.train)


class Reporter:
    """Composes the device's ``Status`` from the parts that know each field, and signs the
    Last Will (the session asks for one before each connection)."""

    def __init__(self, profile: Profile, *, signer: Signer, tracker: ActivityTracker,
                 models: ModelKeeper, outbox: Outbox, pace: Pace, stats: AgentStats) -> None:
        self.profile = profile
        self.signer = signer
        self._tracker = tracker
        self._models = models
        self._outbox = outbox
        self._pace = pace
        self._stats = stats
        self._feature_stats: tuple[int, int, FeatureStats | None] | None = None
        """(model version, samples, stats): computed once per model and training set size."""

    def status(self, state: AgentState, reason: str, device: DeviceState) -> Status:
        return Status(
            state=state,
            battery_pct=device.battery_pct,
            charging=device.charging,
            thermal=device.thermal,
            metered=device.metered,
            free_mem_mb=device.free_mem_mb,
            cores=device.cores,
            step_time_ms=self._pace.step_time_ms,
            model_version=self._models.version,
            outbox_len=len(self._outbox),
            num_samples=self.profile.num_samples,
            label_counts=self.profile.label_counts,
            reason=reason,
            busy_task=self._tracker.current.training,
            feature_stats=self._wanted_stats() if state is not AgentState.OFFLINE else None,
            scored=self._stats.scored,
            anomalies=self._stats.anomalies,
        )

    def _wanted_stats(self) -> FeatureStats | None:
        """The training set's feature statistics while the held model asks for them."""
        held = self._models.current
        if held is None or not held.stored.annex.wants_stats:
            return None
        train = self.profile.data.train
        key = (held.stored.version, len(train))
        if self._feature_stats is None or self._feature_stats[:2] != key:
            stats = FeatureStats.of(train.X) if len(train) else None
            self._feature_stats = (*key, stats)
        return self._feature_stats[2]

    async def will(self) -> bytes:
        """The Last Will: a pre-signed offline status (its seq is reserved like any other)."""
        return await self.signer.sign(
            self.status(AgentState.OFFLINE, "connection_lost", DeviceState()))


class Heartbeat:
    def __init__(self, reporter: Reporter, *, session: Session, tracker: ActivityTracker,
                 probe: ProbeReader, settings: Settings, shutdown: Shutdown,
                 stats: AgentStats, changed: Pulse, status_due: asyncio.Event, clock: Clock,
                 config: AgentConfig, logger: logging.Logger) -> None:
        """``status_due`` is set by whoever changes something a status reports."""
        self._reporter = reporter
        self._profile = reporter.profile
        self._signer = reporter.signer
        self._session = session
        self._tracker = tracker
        self._probe = probe
        self._settings = settings
        self._shutdown = shutdown
        self._stats = stats
        self._changed = changed
        self._due = status_due
        self._clock = clock
        self._config = config
        self._log = logger
        self.last_status: Status | None = None

    async def run(self) -> None:
        while True:
            await self._session.wait_connected()
            self._due.clear()
            activity = self._tracker.current
            if activity.rejected:
                self._shutdown.finish("enrollment_rejected")
                return
            try:
                if activity.enrollment is None:
                    await self._send_enroll()
                else:
                    await self._refresh_pause()
                    await self.publish_status()
            except NotConnectedError:
                await self._clock.sleep(PUBLISH_RETRY_S)
                continue
            if activity.enrollment is None:
                # re-send only on the retry interval (other events must not spam enrolls)
                enrolled = self._tracker.wait_for(lambda a: a.enrollment is not None)
                with contextlib.suppress(TimeoutError):
                    await wait_for(self._clock, enrolled, self._config.enroll_retry_s)
                continue
            with contextlib.suppress(TimeoutError):
                await wait_for(self._clock, self._due.wait(), self._next_wait_s())

    def _next_wait_s(self) -> float:
        wait = self.interval_s()
        until, now = self._tracker.current.deferred_until_ms, wall_ms(self._clock)
        if until > now:
            # wake exactly when the deferral ends: that idle status is the next ask
            wait = min(wait, (until - now) / 1000 + 0.001)
        return wait

    def interval_s(self) -> float:
        # the orchestrator's latest reconfigure wins over the local override
        if self._settings.heartbeat_s is not None:
            return self._settings.heartbeat_s
        if self._config.heartbeat_s is not None:
            return self._config.heartbeat_s
        enrollment = self._tracker.current.enrollment
        return enrollment.heartbeat_s if enrollment is not None else _DEFAULT_HEARTBEAT_S

    async def publish_status(self, state: AgentState | None = None, reason: str = "") -> None:
        if state is None:
            state, reason = self._tracker.report()
        status = self._reporter.status(state, reason, await self._probe.read())
        await self._session.publish(self._profile.topics.up(self._profile.device_id,
                                                            UpKind.STATUS),
                                    await self._signer.sign(status), qos=1, retain=True)
        self._tracker.reported = (state, reason)
        self.last_status = status
        self._stats.statuses_sent += 1
        self._changed.fire()

    async def goodbye(self, reason: str) -> None:
        """A retained offline status, so the fleet view does not wait for the Last Will."""
        if not self._session.connected or not self._tracker.current.enrolled:
            return
        try:
            async with asyncio.timeout(_GOODBYE_S):
                await self.publish_status(AgentState.OFFLINE, reason)
        except (TimeoutError, NotConnectedError, FedmqError) as exc:
            self._log.info("no offline status sent: %s", exc)

    async def _refresh_pause(self) -> None:
        """A pause ends when the conditions that caused it are met again."""
        paused = self._tracker.current.paused
        if paused is None:
            return
        device = await self._probe.read()
        if training_blocked(device, paused.min_battery_pct, paused.max_thermal) is None:
            self._log.info("conditions recovered; no longer paused")
            self._tracker.set(self._tracker.current.on_conditions_met())

    async def _send_enroll(self) -> None:
        p = self._profile
        public = bytes(self._signer.verify_key)
        mac = enroll_mac(p.enroll_secret, fed=p.topics.fed, device_id=p.device_id,
                         public_key=public)
        info = {"device_class": p.device_class, "num_samples": p.num_samples}
        message = Enroll(p.device_id, public, mac, AGENT_VERSION, info)
        await self._session.publish(p.topics.up(p.device_id, UpKind.ENROLL),
                                    await self._signer.sign(message), qos=1)
        self._stats.enrolls_sent += 1
        self._log.info("enroll sent (key %s)", public.hex()[:16])
