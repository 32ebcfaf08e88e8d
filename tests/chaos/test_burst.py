"""A thundering herd after an outage: many devices, each holding a backlog of updates built
while the broker was down, reconnect at the same moment and flush it in batches, re-sending
whatever is not acknowledged (as agents do).

Checked: every update is acknowledged (accepted) and in the orchestrator's ledger exactly
once — nothing lost, nothing twice — and the orchestrator process's peak RSS (``VmHWM`` from
``/proc``) is reported; the long (``chaos``) form also bounds its growth by what is designed
to be in memory (the MQTT Receive Maximum and ingest queues in flight, the broker holding the
rest, plus the fixed budget of the buffered-delta cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from nacl.signing import SigningKey, VerifyKey

from orchestrator.broker import MosquittoBroker
from orchestrator.config import load_config
from orchestrator.devices.commands import provision
from orchestrator.ingest.buffer_cache import DEFAULT_BUDGET_BYTES as BUFFER_CACHE_BYTES
from orchestrator.link.keys import load_or_create_key, public_key_hex
from orchestrator.store import Store
from schemas import (
    Ack,
    AckOutcome,
    Bundle,
    Codec,
    CodecSpec,
    Enroll,
    Enrolled,
    Update,
    UpdateBatch,
    decode_body,
    encode_params,
    enroll_mac,
    pack,
    pack_batch,
    seal_key,
    verify,
)
from tests.support.service_process import service, wait_ready

FED = "herd"
MiB = 1024 * 1024


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class HerdDevice:
    """A device with a backlog: enrolls, then flushes batches until every seq is acked."""

    def __init__(self, bundle: Bundle, broker: MosquittoBroker) -> None:
        self.bundle = bundle
        self.id = bundle.device_id
        self.key = SigningKey.generate()
        self.orch_key = VerifyKey(bytes.fromhex(bundle.orchestrator_key))
        self.broker = broker
        self.seq = 0
        self.backlog: dict[int, bytes] = {}
        self.acked: dict[int, AckOutcome] = {}
        self.reconnects = 0

    def _client(self) -> aiomqtt.Client:
        # a stable client id with a persistent session, as agents have
        return aiomqtt.Client(
            self.broker.host, self.broker.port, username=self.bundle.mqtt_username,
            password=self.bundle.mqtt_password, identifier=f"herd-{self.id}",
            protocol=aiomqtt.ProtocolVersion.V5, timeout=30)

    def _sign(self, message: Enroll | Update, *, seal: bool = False) -> tuple[int, bytes]:
        self.seq += 1
        return self.seq, pack(message, key=self.key, fed=self.bundle.fed, sender=self.id,
                              seq=self.seq, ts_ms=int(time.time() * 1000),
                              seal_to=seal_key(self.orch_key) if seal else None)

    async def enroll(self) -> None:
        public = bytes(self.key.verify_key)
        mac = enroll_mac(bytes.fromhex(self.bundle.enroll_secret), fed=self.bundle.fed,
                         device_id=self.id, public_key=public)
        _, payload = self._sign(Enroll(self.id, public, mac, agent_version="herd"))
        async with self._client() as client:
            await client.subscribe(f"fl/{self.bundle.fed}/down/{self.id}/#", qos=1)
            await client.publish(f"fl/{self.bundle.fed}/up/{self.id}/enroll", payload, qos=1)
            async with asyncio.timeout(30):
                async for message in client.messages:
                    opened = verify(bytes(message.payload), self.orch_key)  # type: ignore[arg-type]
                    if opened.header.type == "enrolled":
                        answer = decode_body(opened, Enrolled)
                        assert answer.status.value == "active", answer
                        return

    def build_backlog(self, updates: int, shapes: dict[str, tuple[int, ...]]) -> int:
        rng = np.random.default_rng(abs(hash(self.id)) % 2**32)
        total = 0
        for _ in range(updates):
            delta = {k: (rng.standard_normal(s) * 0.001).astype(np.float32)
                     for k, s in shapes.items()}
            message = Update(task_id="herd", base_version=0, num_samples=5,
                             tensors=encode_params(delta, CodecSpec(Codec.FLOAT32), rng),
                             codec=Codec.FLOAT32)
            seq, entry = self._sign(message, seal=True)
            self.backlog[seq] = entry
            total += len(entry)
        return total

    async def flush(self, batch_entries: int, ack_timeout: float) -> None:
        """Connect and flush until every backlog seq is acked; reconnect on a lost link."""
        wait = ack_timeout
        while len(self.acked) < len(self.backlog):
            try:
                async with self._client() as client:
                    await client.subscribe(f"fl/{self.bundle.fed}/down/{self.id}/ack", qos=1)
                    receiver = asyncio.create_task(self._receive(client))
                    try:
                        while len(self.acked) < len(self.backlog):
                            due = sorted(s for s in self.backlog if s not in self.acked)
                            for i in range(0, len(due), batch_entries):
                                batch = UpdateBatch([self.backlog[s]
                                                     for s in due[i:i + batch_entries]])
                                await client.publish(
                                    f"fl/{self.bundle.fed}/up/{self.id}/updates",
                                    pack_batch(batch), qos=1)
                            for _ in range(int(wait / 0.05)):
                                if len(self.acked) == len(self.backlog):
                                    break
                                await asyncio.sleep(0.05)
                            wait = min(wait * 2, 60.0)  # the agents' resend backoff
                    finally:
                        receiver.cancel()
                        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                            await receiver
            except aiomqtt.MqttError:
                self.reconnects += 1
                await asyncio.sleep(0.5)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            opened = verify(bytes(message.payload), self.orch_key)  # type: ignore[arg-type]
            for entry in decode_body(opened, Ack).entries:
                if entry.seq in self.backlog:
                    self.acked[entry.seq] = entry.outcome


_CONFIG = """\
[federation]
id = "{fed}"
data_dir = "orchestrator"
[broker]
embedded = false
host = "{host}"
port = {port}
password = "{password}"
password_file = "{password_file}"
pid_file = "{pid_file}"
[model]
kind = "mlp"
n_features = 64
n_classes = 10
hidden = [{hidden}]
[aggregation]
k = {k}
staleness = "constant"
max_staleness = 100000
[ingest]
queue_batches = {queue}
group_batches = {queue}
"""


async def _burst(tmp_path: Path, broker: MosquittoBroker, *, devices: int, updates: int,
                 hidden: int, k: int, queue: int = 16) -> tuple[int, int, int]:
    """Returns (burst bytes, orchestrator VmHWM KiB before the burst, after it)."""
    path = tmp_path / "herd.toml"
    path.write_text(_CONFIG.format(
        fed=FED, host=broker.host, port=broker.port, password=broker.orchestrator_password,
        password_file=broker.password_file, pid_file=broker.pid_file, hidden=hidden, k=k,
        queue=queue))
    config = load_config(path)
    config.federation.data_dir.mkdir()
    key = load_or_create_key(config.federation.key_path)
    async with Store.open(config.federation.store_path) as store:
        bundles = [await provision(store, config, f"herd-{i:04d}",
                                   orchestrator_key=public_key_hex(key))
                   for i in range(devices)]
    await broker.reload()
    herd = [HerdDevice(b, broker) for b in bundles]
    log = tmp_path / "orchestrator.log"
    async with service(path, log, clean_exit=True) as proc:
        await wait_ready(proc, log)
        async with Store.open(config.federation.store_path) as store:
            shapes = {k: v.shape for k, v in (await store.get_version(0)).params.items()}
        sem = asyncio.Semaphore(32)

        async def enroll(device: HerdDevice) -> None:
            async with sem:
                await device.enroll()

        await asyncio.gather(*(enroll(d) for d in herd))
        # the outage: the broker goes away while every device builds a backlog
        await broker.stop()
        burst = sum(await asyncio.gather(
            *(asyncio.to_thread(d.build_backlog, updates, shapes) for d in herd)))
        before = _rss_kib(proc.pid, "VmHWM")
        await broker.start()
        async with asyncio.timeout(600):  # everyone at once
            await asyncio.gather(*(d.flush(batch_entries=8, ack_timeout=5.0) for d in herd))
        peak = _rss_kib(proc.pid, "VmHWM")
    async with Store.open(config.federation.store_path) as store:
        assert await store.integrity_check() == []
        rows = await store.ledger(status=("buffered", "applied"))
    keys = [(r.sender, r.seq) for r in rows]
    assert len(keys) == len(set(keys)), "an update was accepted twice"
    for d in herd:
        assert set(d.acked.values()) <= {AckOutcome.ACCEPTED, AckOutcome.DUPLICATE}
        assert {(d.id, s) for s in d.backlog} <= set(keys), f"{d.id}: an update was lost"
    reconnects = sum(d.reconnects for d in herd)
    print(f"burst: {devices} devices x {updates} updates, {burst / MiB:.1f} MiB; "
          f"orchestrator VmHWM {before / 1024:.0f} MiB before, {peak / 1024:.0f} MiB after; "
          f"{len(keys)} accepted, {reconnects} device reconnects")
    return burst, before, peak


async def test_burst_quick(tmp_path: Path, broker: MosquittoBroker) -> None:
    await _burst(tmp_path, broker, devices=12, updates=5, hidden=32, k=10)


@pytest.mark.chaos
async def test_burst_long(tmp_path: Path, broker: MosquittoBroker) -> None:
    _, before, peak = await _burst(tmp_path, broker, devices=150, updates=20, hidden=256,
                                   k=50, queue=4)
    # Bounded by design: MQTT Receive Maximum and the ingest queues bound what is in flight
    # (the broker holds the rest), and the service's cache of buffered deltas has a fixed
    # budget. Before the Receive Maximum fix this burst took the process past 2 GiB.
    allowance = BUFFER_CACHE_BYTES + 192 * MiB
    assert (peak - before) * 1024 < allowance, f"{(peak - before) / 1024:.0f} MiB"
