"""One load-generator process of ``fedmq bench fleet``: many lightweight devices.

``python -m fedmq.bench._fleet_worker SPEC.json`` reads its devices and timing from the spec,
and per device: makes an Ed25519 key, opens a raw MQTT session (:mod:`fedmq.bench._mqtt_lite`)
with a signed offline Last Will, enrolls with the real ``Enroll`` message (HMAC under the
one-time secret) and waits for the orchestrator's signed ``enrolled``, then publishes a signed
``Status`` heartbeat (QoS 1, retained) every ``heartbeat_s``. The devices report a low battery,
so the orchestrator answers each heartbeat with a deferral instead of a task: the full
heartbeat path is exercised while the task slots stay with the training agents. At the end it
prints one JSON line with its counts.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from fedmq.bench._mqtt_lite import LiteClient, MqttLiteError
from schemas import envelope
from schemas.messages import AgentState, Enroll, Enrolled, EnrollStatus, Message, Status
from schemas.signing import enroll_mac
from schemas.topics import DownKind, Topics, UpKind

_BATTERY_PCT = 5.0  # below any min_battery_pct: deferred, never tasked


@dataclass
class _Counts:
    enrolled: int = 0
    heartbeats_in_window: int = 0
    answers_in_window: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class _Device:
    def __init__(self, spec: dict[str, Any], device: list[str], counts: _Counts,
                 orchestrator_key: VerifyKey) -> None:
        self.id, password, secret = device
        self._secret = bytes.fromhex(secret)
        self._spec = spec
        self._counts = counts
        self._okey = orchestrator_key
        self._topics = Topics(spec["fed"])
        self._key = SigningKey.generate()
        self._seq = 0
        self._enrolled = asyncio.Event()
        self.client = LiteClient(f"lite-{self.id}", self.id, password, keepalive_s=120,
                                 on_publish=self._on_publish)

    def _sign(self, message: Message) -> bytes:
        self._seq += 1
        return envelope.pack(message, key=self._key, fed=self._spec["fed"], sender=self.id,
                             seq=self._seq, ts_ms=int(time.time() * 1000))

    def _in_window(self) -> bool:
        start = float(self._spec["window_start"])
        return start <= time.time() < start + float(self._spec["window_s"])

    def _on_publish(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/" + DownKind.ENROLLED.value):
            try:
                _, reply = envelope.decode(payload, self._okey, Enrolled)
            except Exception:  # a forged or garbled reply is counted, not fatal
                self._counts.error("bad_enrolled")
                return
            if reply.status is EnrollStatus.ACTIVE:
                self._enrolled.set()
        elif self._in_window():
            self._counts.answers_in_window += 1

    async def run(self, stop_at: float) -> None:
        status_topic = self._topics.up(self.id, UpKind.STATUS)
        will = self._sign(Status(state=AgentState.OFFLINE, reason="connection_lost"))
        reader: asyncio.Task[None] | None = None
        try:
            await self.client.connect(self._spec["host"], self._spec["port"],
                                      will=(status_topic, will))
            reader = asyncio.create_task(self.client.run_reader())
            await self.client.subscribe(self._topics.down_all(self.id))
            await self._enroll(stop_at)
            self._counts.enrolled += 1
            heartbeat_s = self._spec["heartbeat_s"]
            await asyncio.sleep(random.uniform(0, heartbeat_s))  # spread the fleet's phases
            while time.time() < stop_at and self.client.connected:
                status = Status(state=AgentState.IDLE, battery_pct=_BATTERY_PCT,
                                charging=False, cores=1, num_samples=100)
                await self.client.publish(status_topic, self._sign(status), qos=1, retain=True)
                if self._in_window():
                    self._counts.heartbeats_in_window += 1
                await asyncio.sleep(max(0.0, min(heartbeat_s, stop_at - time.time())))
        except (MqttLiteError, OSError, TimeoutError) as exc:
            self._counts.error(type(exc).__name__)
        finally:
            await self.client.disconnect()
            if reader is not None:
                reader.cancel()

    @property
    def live(self) -> bool:
        """Connected and enrolled: a device the orchestrator can hear."""
        return self.client.connected and self._enrolled.is_set()

    async def _enroll(self, stop_at: float) -> None:
        public = bytes(self._key.verify_key)
        mac = enroll_mac(self._secret, fed=self._spec["fed"], device_id=self.id,
                         public_key=public)
        topic = self._topics.up(self.id, UpKind.ENROLL)
        deadline = min(time.time() + self._spec["enroll_timeout_s"], stop_at)
        while True:
            await self.client.publish(topic, self._sign(Enroll(self.id, public, mac)), qos=1)
            try:
                await asyncio.wait_for(self._enrolled.wait(), 15.0)
                return
            except TimeoutError:
                if time.time() > deadline:
                    raise


async def _main(spec: dict[str, Any]) -> dict[str, Any]:
    counts = _Counts()
    okey = VerifyKey(bytes.fromhex(spec["orchestrator_key"]))
    devices = [_Device(spec, d, counts, okey) for d in spec["devices"]]
    stop_at = spec["window_start"] + spec["window_s"]
    connected_at_start = 0

    async def sample_start() -> None:
        nonlocal connected_at_start
        await asyncio.sleep(max(0.0, spec["window_start"] - time.time()))
        connected_at_start = sum(d.live for d in devices)

    tasks = [asyncio.create_task(sample_start())]
    interval = 1.0 / spec["connect_rate"]
    for device in devices:
        tasks.append(asyncio.create_task(device.run(stop_at)))
        await asyncio.sleep(interval)
    await asyncio.sleep(max(0.0, stop_at - time.time() - 0.5))
    connected_at_end = sum(d.live for d in devices)
    await asyncio.gather(*tasks)
    return {"devices": len(devices), "connected_at_start": connected_at_start,
            "connected_at_end": connected_at_end, "enrolled": counts.enrolled,
            "heartbeats_in_window": counts.heartbeats_in_window,
            "answers_in_window": counts.answers_in_window, "errors": counts.errors}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = len(spec["devices"]) + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    print(json.dumps(asyncio.run(_main(spec))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
