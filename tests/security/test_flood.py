"""A device floods with its own valid credentials: contained, audited in bounded rows, cut off
at the broker, and the honest devices keep their acks; an operator brings it back.

Real Mosquitto (its pid file given, so suspending a login reloads the real broker), the real
orchestrator and raw MQTT clients, one case per upstream lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

import aiomqtt
import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.config import Config
from orchestrator.devices.commands import reinstate_device
from orchestrator.service import Orchestrator
from orchestrator.store import AuditRecord
from schemas import AckOutcome
from tests.support.sim_device import SimDevice, random_delta
from tests.support.waiting import until

LIMITS = {"updates_per_s": 5.0, "updates_burst": 10, "control_per_s": 5.0,
          "control_burst": 10, "ops_per_s": 5.0, "ops_burst": 10, "flood_after_s": 1.0,
          "audit_interval_s": 0.5, "flood_cooldown_s": 0.0}

LANES = {"updates": "up/dev-flood/updates", "control": "up/dev-flood/status",
         "ops": "ops/request/dev-flood"}


async def _flood(device: SimDevice, topic: str) -> int:
    """Junk as fast as the connection takes it, until the broker cuts the connection."""
    sent = 0
    with contextlib.suppress(aiomqtt.MqttError):
        while True:
            await device.publish_to(topic, os.urandom(64), qos=0)
            sent += 1
            if sent % 50 == 0:
                await asyncio.sleep(0)  # let the rest of the test run
    return sent


async def _refused_rows(orch: Orchestrator, total: int) -> list[AuditRecord]:
    """The flooder's ``refused`` rows, once they account for all ``total`` refusals."""
    async with asyncio.timeout(20):
        while True:
            rows = await orch.store.list_audit(event="refused", device="dev-flood")
            if sum(int(r.detail["count"]) for r in rows) >= total:
                return rows
            await asyncio.sleep(0.1)


async def _connects(broker: MosquittoBroker, device: SimDevice) -> bool:
    try:
        async with aiomqtt.Client(broker.host, broker.port,
                                  username=device.bundle.mqtt_username,
                                  password=device.bundle.mqtt_password,
                                  protocol=aiomqtt.ProtocolVersion.V5):
            return True
    except aiomqtt.MqttError:
        return False


@pytest.mark.parametrize("lane", list(LANES))
async def test_a_flooding_device_is_contained_and_honest_acks_keep_flowing(
    lane: str, make_config: Callable[..., Config], broker: MosquittoBroker,
    devices: Callable[..., Awaitable[SimDevice]],
) -> None:
    config = make_config(limits=LIMITS, broker={"pid_file": str(broker.pid_file)},
                         aggregation={"k": 1, "max_staleness": 50})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        flooder = await devices(orch, "dev-flood")
        honest = await devices(orch, "dev-honest")
        counter = f"refused.rate.{lane}"
        flood = asyncio.create_task(_flood(flooder, f"fl/{config.federation.id}/{LANES[lane]}"))
        await until(lambda: orch.counters[counter] > 20)
        # mid-flood, an honest device's update is judged and acked
        seq, entry = honest.update(random_delta(orch.params))
        await honest.send(entry)
        assert (await honest.wait_acks([seq], within=20))[seq].outcome is AckOutcome.ACCEPTED

        # isolated, login suspended: the broker cuts the connection and refuses new ones
        sent = await asyncio.wait_for(flood, 30)
        assert orch.counters["flood.isolated"] == 1
        assert not await _connects(broker, flooder)
        device = await orch.store.get_device("dev-flood")
        assert device is not None and device.status == "isolated"
        (isolated,) = await orch.store.list_audit(event="isolated", device="dev-flood")
        assert isolated.reason == "flood" and isolated.detail["lane"] == lane
        # thousands refused, a bounded number of audit rows (one per lane and interval)
        refused = orch.counters[counter]
        assert refused > 100 and refused <= sent
        metric = f'fedmq_messages_refused_total{{lane="{lane}"}} '
        (line,) = [x for x in orch.metrics.render().decode().splitlines()
                   if x.startswith(metric)]
        assert float(line.split()[-1]) == refused
        rows = await _refused_rows(orch, refused)
        assert len(rows) <= 40  # two per second of flood, whatever the message rate
        assert {r.reason for r in rows} == {"rate_limited"}
        assert {r.detail["lane"] for r in rows} == {lane}
        assert await orch.store.list_audit(event="refused", device="dev-honest") == []

        # the operator reinstates it: the old password works again, the service forgets it
        await reinstate_device(orch.store, orch.config, "dev-flood", reason="checked")
        async with asyncio.timeout(20):
            while not await _connects(broker, flooder):  # noqa: ASYNC110 (no event to wait on)
                await asyncio.sleep(0.1)
        await until(lambda: (view := orch.registry.get("dev-flood")) is not None
                    and view.status == "active")
        seq, entry = honest.update(random_delta(orch.params, seed=5), base_version=orch.version)
        await honest.send(entry)
        assert (await honest.wait_acks([seq], within=20))[seq].outcome is AckOutcome.ACCEPTED
