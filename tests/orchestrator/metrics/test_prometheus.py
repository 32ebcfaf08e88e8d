"""The orchestrator's Prometheus metrics: values, exposition, and the asyncio endpoint."""

from __future__ import annotations

import asyncio
import math
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.metrics.prometheus import Metrics, MetricsServerError
from schemas.errors import Reason


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(url: str, method: str = "GET", accept: str | None = None
         ) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, method=method)
    if accept is not None:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


def test_counters_gauges_and_histograms_move() -> None:
    m = Metrics(federation="fedA")
    m.received(5)
    m.accepted(3)
    m.rejected(Reason.BAD_SIGNATURE)
    m.rejected("norm_outlier", 2)  # screening reasons are free text
    m.duplicate()
    m.refused("ops", 4)
    m.observe_ingest_latency(0.02)
    m.observe_ingest_latency(0.04)
    m.observe_batch(5)
    m.observe_aggregation(0.3)
    for s in (0, 1, 1, 4, 30):
        m.observe_staleness(s)
    m.set_buffer(2, capacity=4)
    m.set_version(7)
    m.set_online(3)
    m.set_devices_by_state({"idle": 2, "training": 1})
    m.set_outbox_backlog(11)
    m.set_privacy_epsilon(1.5)

    got = _samples(m.render().decode())
    assert got[("fedmq_updates_received_total", ())] == 5
    assert got[("fedmq_updates_accepted_total", ())] == 3
    assert got[("fedmq_updates_duplicate_total", ())] == 1
    assert got[("fedmq_updates_rejected_total", (("reason", "bad_signature"),))] == 1
    assert got[("fedmq_updates_rejected_total", (("reason", "norm_outlier"),))] == 2
    # every known reason is exposed from the start, at zero
    assert got[("fedmq_updates_rejected_total", (("reason", "replay"),))] == 0
    assert got[("fedmq_messages_refused_total", (("lane", "ops"),))] == 4
    assert got[("fedmq_messages_refused_total", (("lane", "updates"),))] == 0
    assert got[("fedmq_ingest_latency_seconds_count", ())] == 2
    assert got[("fedmq_ingest_latency_seconds_sum", ())] == pytest.approx(0.06)
    assert got[("fedmq_ingest_latency_seconds_bucket", (("le", "0.025"),))] == 1
    assert got[("fedmq_batch_size_bucket", (("le", "8.0"),))] == 1
    assert got[("fedmq_aggregation_duration_seconds_count", ())] == 1
    # Fibonacci-ish integer buckets: 0 | 1 1 | 4 (<=5) | 30 (<=34)
    assert got[("fedmq_update_staleness_bucket", (("le", "0.0"),))] == 1
    assert got[("fedmq_update_staleness_bucket", (("le", "1.0"),))] == 3
    assert got[("fedmq_update_staleness_bucket", (("le", "3.0"),))] == 3
    assert got[("fedmq_update_staleness_bucket", (("le", "5.0"),))] == 4
    assert got[("fedmq_update_staleness_bucket", (("le", "34.0"),))] == 5
    assert got[("fedmq_buffer_updates", ())] == 2
    assert got[("fedmq_buffer_capacity", ())] == 4
    assert got[("fedmq_model_version", ())] == 7
    assert got[("fedmq_devices_online", ())] == 3
    assert got[("fedmq_devices", (("state", "training"),))] == 1
    assert got[("fedmq_devices", (("state", "offline"),))] == 0
    assert got[("fedmq_outbox_backlog", ())] == 11
    assert got[("fedmq_privacy_epsilon", ())] == 1.5
    assert got[("fedmq_federation_info", (("federation", "fedA"),))] == 1
    assert got[("fedmq_stopped", ())] == 0

    # a state that disappears from the counts goes back to zero
    m.set_devices_by_state({"idle": 3})
    m.set_stopped("target_reached")
    got = _samples(m.render().decode())
    assert got[("fedmq_devices", (("state", "training"),))] == 0
    assert got[("fedmq_devices", (("state", "idle"),))] == 3
    assert got[("fedmq_stop_info", (("reason", "target_reached"),))] == 1
    assert got[("fedmq_stopped", ())] == 1

    with pytest.raises(ValueError, match="cannot go down"):
        m.accepted(-1)


def test_unknown_values_are_nan_until_set() -> None:
    got = _samples(Metrics().render().decode())
    assert math.isnan(got[("fedmq_model_version", ())])
    assert math.isnan(got[("fedmq_privacy_epsilon", ())])
    assert got[("fedmq_stop_info", (("reason", ""),))] == 1


def test_two_instances_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()
    a.received(4)
    assert _samples(b.render().decode())[("fedmq_updates_received_total", ())] == 0
    assert b.snapshot()["updates"]["received"] == 0


def test_snapshot_is_plain_numbers_with_rates_over_the_window() -> None:
    clock = FakeClock(100.0)
    m = Metrics(clock=clock, rate_window_s=10.0)
    assert m.snapshot()["model_version"] is None
    clock.now = 110.0
    m.received(20)
    m.accepted(10)
    clock.now = 115.0
    m.received(10)
    m.rejected(Reason.STALE, 3)
    m.observe_staleness(2)
    m.observe_staleness(4)
    m.observe_aggregation(0.5)
    m.set_buffer(3, capacity=8)
    m.set_version(2)
    m.set_stopped("plateau")
    snap = m.snapshot()
    assert snap["updates"] == {"received": 30, "accepted": 10, "duplicates": 0, "rejected": 3,
                               "rejected_by_reason": {"stale": 3}}
    # the window is 10 s: 30 received in it
    assert snap["rate_per_s"] == {"received": 3.0, "accepted": 1.0}
    assert snap["staleness"] == {"count": 2, "mean": 3.0}
    assert snap["aggregation_s"] == {"count": 1, "mean": 0.5, "last": 0.5}
    assert snap["ingest_latency_s"] == {"count": 0, "mean": None}
    assert snap["buffer"] == {"fill": 3, "capacity": 8}
    assert snap["model_version"] == 2
    assert snap["stop_reason"] == "plateau"
    clock.now = 121.0  # the first burst left the window
    assert m.snapshot()["rate_per_s"] == {"received": 1.0, "accepted": 0.0}
    clock.now = 200.0
    assert m.snapshot()["rate_per_s"] == {"received": 0.0, "accepted": 0.0}


async def test_endpoint_serves_parseable_exposition_and_closes_the_port() -> None:
    m = Metrics()
    m.received(2)
    m.rejected(Reason.REPLAY)
    async with m.serve("127.0.0.1", 0) as endpoint:
        assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        status, ctype, body = await asyncio.to_thread(_get, endpoint.url)
        assert status == 200
        assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
        got = _samples(body.decode())
        assert got[("fedmq_updates_received_total", ())] == 2
        assert got[("fedmq_updates_rejected_total", (("reason", "replay"),))] == 1

        m.received(1)  # served live, not cached
        _, _, body = await asyncio.to_thread(_get, endpoint.url + "?x=1")
        assert _samples(body.decode())[("fedmq_updates_received_total", ())] == 3

        status, ctype, body = await asyncio.to_thread(
            _get, endpoint.url, accept="application/openmetrics-text; version=1.0.0")
        assert status == 200 and ctype.startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")

        status, _, body = await asyncio.to_thread(_get, endpoint.url.replace("/metrics", "/"))
        assert status == 404
        status, _, _ = await asyncio.to_thread(_get, endpoint.url, "POST")
        assert status == 405
        status, _, body = await asyncio.to_thread(_get, endpoint.url, "HEAD")
        assert status == 200 and body == b""

        # garbage and half-sent requests do not disturb the server
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"nonsense\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        await writer.wait_closed()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        idle_writer.write(b"GET /metr")
        await idle_writer.drain()
        status, _, _ = await asyncio.to_thread(_get, endpoint.url)
        assert status == 200
        port = endpoint.port
    # leaving the block cancelled the half-sent request and closed the port
    assert await idle_reader.read() == b""
    idle_writer.close()
    await idle_writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_endpoint_reports_a_busy_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsServerError, match=f"127.0.0.1:{port}"):
            async with Metrics().serve("127.0.0.1", port):
                pass
