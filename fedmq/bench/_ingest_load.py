"""Load generator of ``fedmq bench ingest``: one process driving several enrolled devices.

Run as ``python -m fedmq.bench._ingest_load SPEC.json``. It speaks only the device side
of the wire contract (``schemas``, aiomqtt, numpy, pynacl). Protocol with the parent, one JSON
object per stdout line:

1. enroll every device, pre-build every signed, sealed int8 update and pack the batches, dump
   a sample of the entries (for the kernel floor), then print ``{"ready": ...}``;
2. wait for one line on stdin (the go signal), then publish each device's batches keeping at
   most ``window`` batches unacknowledged per device (as an agent's flusher does);
3. print ``{"done": ...}`` with the acknowledged seqs and the run's monotonic start and end.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import msgpack
import numpy as np
from nacl.signing import SigningKey, VerifyKey

from schemas import (
    Ack,
    AckOutcome,
    Codec,
    CodecSpec,
    Enroll,
    Enrolled,
    Topics,
    Update,
    UpdateBatch,
    UpKind,
    encode_params,
    enroll_mac,
    pack,
    pack_batch,
    seal_key,
)
from schemas.envelope import check_header, decode_body, message_type, verify
from schemas.topics import ORCHESTRATOR_SENDER

_ENROLL_TIMEOUT_S = 30.0


@dataclass
class _Device:
    device_id: str
    password: str
    secret: bytes
    key: SigningKey
    batches: list[tuple[list[int], bytes]] = field(default_factory=list)
    """``(seqs, payload)`` per pre-built batch, in send order."""
    sample: list[bytes] = field(default_factory=list)
    acked: dict[int, str] = field(default_factory=dict)
    """seq -> ack outcome."""
    enrolled: asyncio.Future[Enrolled] | None = None
    progress: asyncio.Event = field(default_factory=asyncio.Event)


def _build(dev: _Device, spec: dict[str, Any], orch_key: VerifyKey, seed: int) -> None:
    """Pre-build the device's batches: a few distinct int8 deltas, each update signed and
    sealed under its own seq (sealing binds fed, sender and seq, so nothing is shared)."""
    rng = np.random.default_rng(seed)
    shapes: dict[str, list[int]] = spec["shapes"]
    codec = CodecSpec(Codec.INT8)
    variants = [
        encode_params({name: (rng.standard_normal(shape) * 0.01).astype(np.float32)
                       for name, shape in shapes.items()}, codec, rng)
        for _ in range(4)
    ]
    seal_to = seal_key(orch_key)
    now = int(time.time() * 1000)
    seq = 0
    per_batch = int(spec["batch_entries"])
    for _ in range(int(spec["batches_per_device"])):
        seqs: list[int] = []
        entries: list[bytes] = []
        for _ in range(per_batch):
            seq += 1
            message = Update(task_id="bench", base_version=0, num_samples=int(rng.integers(
                10, 100)), tensors=variants[seq % len(variants)], codec=Codec.INT8,
                local_steps=1, train_loss=0.5)
            entries.append(pack(message, key=dev.key, fed=spec["fed"], sender=dev.device_id,
                                seq=seq, ts_ms=now, seal_to=seal_to))
            seqs.append(seq)
        if len(dev.sample) < int(spec["sample_per_device"]):
            dev.sample.extend(entries[: int(spec["sample_per_device"]) - len(dev.sample)])
        dev.batches.append((seqs, pack_batch(UpdateBatch(entries))))


async def _receive(client: aiomqtt.Client, devices: dict[str, _Device], fed: str,
                   orch_key: VerifyKey) -> None:
    async for message in client.messages:
        device_id = str(message.topic).split("/")[3]
        dev = devices[device_id]
        opened = verify(bytes(message.payload), orch_key)
        check_header(opened.header, fed=fed, sender=ORCHESTRATOR_SENDER,
                     now_ms=int(time.time() * 1000), recipient=device_id)
        decoded = decode_body(opened, message_type(opened))
        if isinstance(decoded, Enrolled) and dev.enrolled is not None:
            if not dev.enrolled.done():
                dev.enrolled.set_result(decoded)
        elif isinstance(decoded, Ack):
            for entry in decoded.entries:
                dev.acked[entry.seq] = entry.outcome.value
            dev.progress.set()


async def _drive(client: aiomqtt.Client, dev: _Device, topics: Topics, window: int) -> None:
    """Publish the device's batches with at most ``window`` of them unacknowledged."""
    in_flight: list[list[int]] = []
    up = topics.up(dev.device_id, UpKind.UPDATES)
    for seqs, payload in dev.batches:
        while len(in_flight) >= window:
            dev.progress.clear()
            in_flight = [s for s in in_flight if not all(q in dev.acked for q in s)]
            if len(in_flight) >= window:
                await dev.progress.wait()
        await client.publish(up, payload, qos=1)
        in_flight.append(seqs)
    while in_flight:
        dev.progress.clear()
        in_flight = [s for s in in_flight if not all(q in dev.acked for q in s)]
        if in_flight:
            await dev.progress.wait()


def _prepare(spec: dict[str, Any]) -> dict[str, _Device]:
    """The devices with their pre-built batches; a sample of their entries is written to
    ``sample_path`` for the parent's kernel-floor measurement."""
    orch_key = VerifyKey(bytes.fromhex(spec["orchestrator_key"]))
    devices = {
        d["device_id"]: _Device(d["device_id"], d["password"], bytes.fromhex(d["secret"]),
                                SigningKey.generate())
        for d in spec["devices"]
    }
    for i, dev in enumerate(devices.values()):
        _build(dev, spec, orch_key, seed=int(spec["seed"]) * 1000 + i)
    sample = {d.device_id: {"key": bytes(d.key.verify_key), "entries": d.sample}
              for d in devices.values()}
    Path(spec["sample_path"]).write_bytes(msgpack.packb(sample))
    return devices


async def _run(spec: dict[str, Any], devices: dict[str, _Device]) -> None:
    orch_key = VerifyKey(bytes.fromhex(spec["orchestrator_key"]))
    fed = spec["fed"]
    topics = Topics(fed)
    async with asyncio.TaskGroup() as tg:
        clients: dict[str, aiomqtt.Client] = {}
        receivers: list[asyncio.Task[None]] = []
        for dev in devices.values():
            client = aiomqtt.Client(
                spec["host"], spec["port"], username=dev.device_id, password=dev.password,
                identifier=f"{dev.device_id}-{uuid.uuid4().hex[:6]}",
                protocol=aiomqtt.ProtocolVersion.V5)
            await client.__aenter__()
            clients[dev.device_id] = client
            await client.subscribe(topics.down_all(dev.device_id), qos=1)
            receivers.append(tg.create_task(_receive(client, {dev.device_id: dev}, fed,
                                                     orch_key)))
        try:
            for dev in devices.values():
                dev.enrolled = asyncio.get_running_loop().create_future()
                public = bytes(dev.key.verify_key)
                mac = enroll_mac(dev.secret, fed=fed, device_id=dev.device_id,
                                 public_key=public)
                payload = pack(Enroll(dev.device_id, public, mac, agent_version="bench"),
                               key=dev.key, fed=fed, sender=dev.device_id, seq=0,
                               ts_ms=int(time.time() * 1000))
                await clients[dev.device_id].publish(
                    topics.up(dev.device_id, UpKind.ENROLL), payload, qos=1)
            async with asyncio.timeout(_ENROLL_TIMEOUT_S):
                answers = [await d.enrolled for d in devices.values() if d.enrolled]
            statuses = sorted({a.status.value for a in answers})
            _emit({"ready": {"devices": len(devices), "statuses": statuses}})
            await asyncio.to_thread(sys.stdin.readline)
            started = time.monotonic()
            await asyncio.gather(*(_drive(clients[d.device_id], d, topics, spec["window"])
                                   for d in devices.values()))
            ended = time.monotonic()
            _emit({"done": {
                "started": started, "ended": ended,
                "accepted": {d.device_id: sorted(s for s, o in d.acked.items()
                                                 if o == AckOutcome.ACCEPTED.value)
                             for d in devices.values()},
                "other": {d.device_id: {str(s): o for s, o in d.acked.items()
                                        if o != AckOutcome.ACCEPTED.value}
                          for d in devices.values()},
            }})
        finally:
            for task in receivers:
                task.cancel()
            for client in clients.values():
                try:
                    await client.__aexit__(None, None, None)
                except aiomqtt.MqttError:
                    pass


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    devices = _prepare(spec)
    asyncio.run(_run(spec, devices))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
