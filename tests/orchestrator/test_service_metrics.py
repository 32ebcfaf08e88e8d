"""The service's Prometheus metrics: fed from ingestion and aggregation, served on the
configured loopback port inside the service, off by default."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.config import Config
from orchestrator.metrics.counters import MeteredCounter
from orchestrator.metrics.prometheus import Metrics, MetricsEndpoint
from orchestrator.service import Orchestrator, OrchestratorError
from schemas import AckOutcome
from tests.support.sim_device import random_delta


async def until(condition: Callable[[], Any], within: float = 10) -> None:
    """Poll ``condition`` (counters and metrics have no event to wait on)."""
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"condition not met within {within}s")


async def scrape(endpoint: MetricsEndpoint) -> dict[str, float]:
    """``GET /metrics``: every sample line as ``{name{labels}: value}``."""
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    samples: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_the_counter_meters_ingestion_keys_only() -> None:
    metrics = Metrics()
    counters = MeteredCounter(metrics)
    counters["accepted"] += 2
    counters["duplicate"] += 1
    counters["rejected.stale"] += 1
    counters["quarantined.norm_outlier"] += 1
    counters["status"] += 5
    counters.update(["rejected.stale"])
    snap = metrics.snapshot()["updates"]
    assert snap == {"received": 5, "accepted": 2, "duplicates": 1, "rejected": 3,
                    "rejected_by_reason": {"norm_outlier": 1, "stale": 2}}
    assert counters == {"accepted": 2, "duplicate": 1, "rejected.stale": 2,
                        "quarantined.norm_outlier": 1, "status": 5}


async def test_the_endpoint_shows_the_traffic(
    make_config: Callable[..., Config], devices: Callable[..., Any],
) -> None:
    config = make_config(metrics={"port": 0}, aggregation={"k": 1})
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        endpoint = orch.metrics_endpoint
        assert endpoint is not None and endpoint.host == "127.0.0.1" and endpoint.port > 0
        dev = await devices(orch, "dev-1")
        delta = random_delta(orch.params)
        good_seq, good = dev.update(delta)
        bad_seq, bad = dev.update(delta, base_version=7)
        await dev.send(good, good, bad)  # accepted, duplicate, unknown_version
        acks = await dev.wait_acks([good_seq, bad_seq])
        assert acks[bad_seq].outcome is AckOutcome.REJECTED
        async with asyncio.timeout(10):
            await orch.wait_for_version(1)
        # the aggregation is timed once its version is committed, a batch once its acks are
        # out (a device may hear its ack first)
        await until(lambda: orch.metrics.snapshot()["aggregation_s"]["count"] == 1
                    and orch.metrics.snapshot()["batch_size"]["count"] == 1)
        samples = await scrape(endpoint)
    assert samples["fedmq_updates_received_total"] == 3
    assert samples["fedmq_updates_accepted_total"] == 1
    assert samples["fedmq_updates_duplicate_total"] == 1
    assert samples['fedmq_updates_rejected_total{reason="unknown_version"}'] == 1
    assert samples['fedmq_updates_rejected_total{reason="bad_signature"}'] == 0
    assert samples["fedmq_batch_size_count"] == 1 and samples["fedmq_batch_size_sum"] == 3
    assert samples["fedmq_ingest_latency_seconds_count"] == 1
    assert samples["fedmq_model_version"] == 1
    assert samples["fedmq_update_staleness_count"] == 1
    assert samples['fedmq_update_staleness_bucket{le="0.0"}'] == 1
    assert samples["fedmq_aggregation_duration_seconds_count"] == 1
    assert any(re.fullmatch(r'fedmq_federation_info\{federation="testfed"\}', k)
               for k in samples)


async def test_metrics_are_off_by_default(orchestrator: Orchestrator) -> None:
    assert orchestrator.metrics_endpoint is None
    assert orchestrator.config.metrics.port is None


async def test_a_busy_metrics_port_stops_the_start_with_one_line(
    make_config: Callable[..., Config],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(metrics={"port": port})
        with pytest.raises(OrchestratorError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            async with Orchestrator(config, store_synchronous="NORMAL"):
                pass
