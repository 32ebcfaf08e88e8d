"""Prometheus metrics of one orchestrator, and a tiny asyncio HTTP endpoint that serves them.

Each :class:`Metrics` owns its own ``CollectorRegistry`` (never the process-global one), so
several orchestrators can live in one process (tests, simulations). The service calls the plain
methods (``received``, ``accepted``, ``rejected(reason)``...) as things happen;
:meth:`Metrics.snapshot` gives the same figures as plain numbers for the fleet summary and
``fedmq federation status``; :meth:`Metrics.serve` exposes ``GET /metrics`` on the event loop
(prometheus-client's own server runs in a thread, which we do not want beside the service).

Every metric name starts with ``fedmq_``. Values not known yet (model version, privacy
epsilon) are NaN in the exposition and ``None`` in the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder, generate_latest

from orchestrator.errors import OrchestratorError
from orchestrator.link.rates import Lane
from schemas.errors import Reason
from schemas.messages import AgentState

__all__ = [
    "AGGREGATION_BUCKETS",
    "BATCH_BUCKETS",
    "INGEST_LATENCY_BUCKETS",
    "STALENESS_BUCKETS",
    "Metrics",
    "MetricsEndpoint",
    "MetricsServerError",
]

INGEST_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                          5.0, 10.0, 30.0)
"""Seconds from receipt of a batch to its ack (an fsync'd commit sits in between)."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
AGGREGATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                       60.0)
STALENESS_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144)
"""Staleness is an integer (versions behind); Fibonacci edges keep the small values apart."""

_MAX_REQUEST_BYTES = 8192
_READ_TIMEOUT_S = 10.0
_CLOSE_TIMEOUT_S = 5.0


class MetricsServerError(OrchestratorError):
    """The metrics endpoint could not start (address in use, bad host...)."""


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where :meth:`Metrics.serve` listens (the real port when 0 was asked for)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


@dataclass(frozen=True)
class _Instruments:
    """The Prometheus metrics, one declaration each (name, help, labels, buckets)."""

    received: Counter
    accepted: Counter
    rejected: Counter
    duplicates: Counter
    refused: Counter
    ingest_latency: Histogram
    batch_size: Histogram
    aggregation: Histogram
    buffer: Gauge
    buffer_capacity: Gauge
    version: Gauge
    staleness: Histogram
    online: Gauge
    by_state: Gauge
    outbox: Gauge
    epsilon: Gauge
    stopped: Gauge
    stop: Info
    federation: Info

    @classmethod
    def declare(cls, reg: CollectorRegistry) -> _Instruments:
        return cls(
            received=Counter(
                "fedmq_updates_received", "Updates received (every outcome)", registry=reg),
            accepted=Counter(
                "fedmq_updates_accepted", "Updates accepted into the buffer", registry=reg),
            rejected=Counter(
                "fedmq_updates_rejected", "Updates rejected, by reason", ["reason"],
                registry=reg),
            duplicates=Counter(
                "fedmq_updates_duplicate",
                "Re-sent updates acknowledged again (never applied twice)", registry=reg),
            refused=Counter(
                "fedmq_messages_refused",
                "Messages dropped unread by the per-sender rate limits, by lane", ["lane"],
                registry=reg),
            ingest_latency=Histogram(
                "fedmq_ingest_latency_seconds", "Seconds from receipt of a batch to its ack",
                buckets=INGEST_LATENCY_BUCKETS, registry=reg),
            batch_size=Histogram(
                "fedmq_batch_size", "Updates per received batch", buckets=BATCH_BUCKETS,
                registry=reg),
            aggregation=Histogram(
                "fedmq_aggregation_duration_seconds", "Seconds to aggregate and commit a version",
                buckets=AGGREGATION_BUCKETS, registry=reg),
            buffer=Gauge(
                "fedmq_buffer_updates", "Accepted updates waiting for aggregation", registry=reg),
            buffer_capacity=Gauge(
                "fedmq_buffer_capacity", "Updates that trigger an aggregation (K); NaN if unknown",
                registry=reg),
            version=Gauge("fedmq_model_version", "Current global model version", registry=reg),
            staleness=Histogram(
                "fedmq_update_staleness",
                "Versions between an update's base and the model it was applied to",
                buckets=STALENESS_BUCKETS, registry=reg),
            online=Gauge(
                "fedmq_devices_online", "Devices whose last status is not offline", registry=reg),
            by_state=Gauge(
                "fedmq_devices", "Devices by last reported agent state", ["state"], registry=reg),
            outbox=Gauge(
                "fedmq_outbox_backlog",
                "Updates waiting in agents' outboxes (sum of reported outbox_len)", registry=reg),
            epsilon=Gauge(
                "fedmq_privacy_epsilon", "Federation-level DP epsilon spent so far", registry=reg),
            stopped=Gauge("fedmq_stopped", "1 once a stopping rule fired, else 0", registry=reg),
            stop=Info(
                "fedmq_stop", "Why the federation stopped (empty while running)", registry=reg),
            federation=Info(
                "fedmq_federation", "The federation this orchestrator serves", registry=reg),
        )

    def start(self, federation: str | None) -> None:
        """Known label values start at zero, so rate() works from the first scrape; values not
        known yet are NaN."""
        for reason in Reason:
            self.rejected.labels(reason=reason.value)
        for lane in Lane:
            self.refused.labels(lane=lane.value)
        for state in AgentState:
            self.by_state.labels(state=state.value).set(0)
        self.version.set(math.nan)
        self.buffer_capacity.set(math.nan)
        self.epsilon.set(math.nan)
        self.stop.info({"reason": ""})
        if federation is not None:
            self.federation.info({"federation": federation})


class Metrics:
    """The orchestrator's metrics, in a registry of their own.

    ``clock`` (monotonic seconds) and ``rate_window_s`` drive the ingest rates in
    :meth:`snapshot`; inject a clock to test them without sleeping.
    """

    def __init__(
        self,
        *,
        federation: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        rate_window_s: float = 60.0,
    ) -> None:
        if not rate_window_s > 0:
            raise ValueError(f"rate_window_s must be > 0, got {rate_window_s!r}")
        self._clock = clock
        self._window = float(rate_window_s)
        self._started = clock()
        self.registry = CollectorRegistry(auto_describe=True)
        self._m = _Instruments.declare(self.registry)

        # the plain figures behind snapshot(); prometheus-client's own values are private
        self._counts = {"received": 0, "accepted": 0, "duplicates": 0}
        self._rejections: dict[str, int] = {}
        self._sums = {"ingest_latency": [0, 0.0], "aggregation": [0, 0.0], "staleness": [0, 0.0],
                      "batch_size": [0, 0.0]}
        self._last_aggregation_s: float | None = None
        self._buffer_n = 0
        self._capacity_n: int | None = None
        self._version_n: int | None = None
        self._online_n = 0
        self._states: dict[str, int] = {}
        self._outbox_n = 0
        self._epsilon_v: float | None = None
        self._stop_reason: str | None = None
        self._recent: dict[str, deque[tuple[float, int]]] = {
            "received": deque(), "accepted": deque()}

        self._m.start(federation)

    # -- ingestion ------------------------------------------------------------------------------

    def received(self, n: int = 1) -> None:
        """``n`` updates arrived (before judging: every outcome counts)."""
        n = _count(n)
        self._m.received.inc(n)
        self._counts["received"] += n
        self._note_recent("received", n)

    def accepted(self, n: int = 1) -> None:
        n = _count(n)
        self._m.accepted.inc(n)
        self._counts["accepted"] += n
        self._note_recent("accepted", n)

    def rejected(self, reason: Reason | str, n: int = 1) -> None:
        """``n`` updates rejected (or quarantined) for ``reason`` (a :class:`Reason` value or
        the screening's own reason text)."""
        n = _count(n)
        label = reason.value if isinstance(reason, Reason) else str(reason)
        self._m.rejected.labels(reason=label).inc(n)
        self._rejections[label] = self._rejections.get(label, 0) + n

    def duplicate(self, n: int = 1) -> None:
        n = _count(n)
        self._m.duplicates.inc(n)
        self._counts["duplicates"] += n

    def refused(self, lane: str, n: int = 1) -> None:
        """``n`` messages on ``lane`` dropped by the rate limits (before any decoding)."""
        self._m.refused.labels(lane=lane).inc(_count(n))

    def observe_ingest_latency(self, seconds: float) -> None:
        self._m.ingest_latency.observe(seconds)
        self._add("ingest_latency", seconds)

    def observe_batch(self, size: int) -> None:
        self._m.batch_size.observe(size)
        self._add("batch_size", size)

    # -- aggregation and model ------------------------------------------------------------------

    def observe_aggregation(self, seconds: float) -> None:
        self._m.aggregation.observe(seconds)
        self._add("aggregation", seconds)
        self._last_aggregation_s = float(seconds)

    def observe_staleness(self, staleness: int) -> None:
        """One applied update's staleness (current version minus its base version)."""
        self._m.staleness.observe(staleness)
        self._add("staleness", staleness)

    def set_buffer(self, n: int, capacity: int | None = None) -> None:
        """Buffer fill: ``n`` waiting updates (and the aggregation trigger K, if given)."""
        self._m.buffer.set(n)
        self._buffer_n = int(n)
        if capacity is not None:
            self._m.buffer_capacity.set(capacity)
            self._capacity_n = int(capacity)

    def set_version(self, version: int) -> None:
        self._m.version.set(version)
        self._version_n = int(version)

    # -- fleet ----------------------------------------------------------------------------------

    def set_online(self, n: int) -> None:
        self._m.online.set(n)
        self._online_n = int(n)

    def set_devices_by_state(self, counts: Mapping[str, int]) -> None:
        """Replace the per-state device counts (a state missing from ``counts`` goes to 0)."""
        for state in self._states.keys() - counts.keys():
            self._m.by_state.labels(state=state).set(0)
        for state, n in counts.items():
            self._m.by_state.labels(state=str(state)).set(n)
        self._states = {str(s): int(n) for s, n in counts.items()}

    def set_outbox_backlog(self, n: int) -> None:
        """The sum of ``outbox_len`` over the devices' latest heartbeats."""
        self._m.outbox.set(n)
        self._outbox_n = int(n)

    def set_privacy_epsilon(self, epsilon: float) -> None:
        self._m.epsilon.set(epsilon)
        self._epsilon_v = float(epsilon)

    def set_stopped(self, reason: str | None) -> None:
        """Record why the federation stopped; ``None`` when it resumes."""
        self._m.stop.info({"reason": reason or ""})
        self._m.stopped.set(0 if reason is None else 1)
        self._stop_reason = reason

    # -- reading --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every figure as plain JSON-able numbers (``None`` where not known yet)."""
        now = self._clock()
        return {
            "updates": {
                "received": self._counts["received"],
                "accepted": self._counts["accepted"],
                "duplicates": self._counts["duplicates"],
                "rejected": sum(self._rejections.values()),
                "rejected_by_reason": dict(sorted(self._rejections.items())),
            },
            "rate_per_s": {kind: self._rate(kind, now) for kind in self._recent},
            "ingest_latency_s": self._summary("ingest_latency"),
            "batch_size": self._summary("batch_size"),
            "aggregation_s": {**self._summary("aggregation"), "last": self._last_aggregation_s},
            "staleness": self._summary("staleness"),
            "buffer": {"fill": self._buffer_n, "capacity": self._capacity_n},
            "model_version": self._version_n,
            "devices": {"online": self._online_n, "by_state": dict(sorted(self._states.items()))},
            "outbox_backlog": self._outbox_n,
            "privacy_epsilon": self._epsilon_v,
            "stop_reason": self._stop_reason,
        }

    def render(self) -> bytes:
        """The registry in the Prometheus text format (``text/plain; version=0.0.4``)."""
        return generate_latest(self.registry)

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0
                    ) -> AsyncIterator[MetricsEndpoint]:
        """Serve ``GET /metrics`` on ``host:port`` (0 = any free port) while the block runs.

        On the event loop (``asyncio.start_server``), one request per connection. Leaving the
        block stops listening, cancels requests in flight and closes their connections.
        """
        handlers: set[asyncio.Task[Any]] = set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await self._answer(reader, writer)
            finally:
                await _close(writer)
                handlers.discard(task)

        try:
            server = await asyncio.start_server(handle, host, port, limit=_MAX_REQUEST_BYTES)
        except OSError as exc:
            raise MetricsServerError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        try:
            bound = server.sockets[0].getsockname()
            yield MetricsEndpoint(host=str(bound[0]), port=int(bound[1]))
        finally:
            server.close()
            for task in list(handlers):
                task.cancel()
            if handlers:
                await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()

    # -- internals ------------------------------------------------------------------------------

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT_S)
        except (asyncio.LimitOverrunError, ValueError):
            await _respond(writer, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return  # the client went away or never finished: nobody to answer
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await _respond(writer, HTTPStatus.BAD_REQUEST)
            return
        method, target = parts[0], parts[1]
        if urlsplit(target).path != "/metrics":
            await _respond(writer, HTTPStatus.NOT_FOUND)
            return
        if method not in ("GET", "HEAD"):
            await _respond(writer, HTTPStatus.METHOD_NOT_ALLOWED, headers={"Allow": "GET, HEAD"})
            return
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        await _respond(writer, HTTPStatus.OK, body, content_type, head_only=method == "HEAD")

    def _add(self, name: str, value: float) -> None:
        acc = self._sums[name]
        acc[0] += 1
        acc[1] += float(value)

    def _summary(self, name: str) -> dict[str, Any]:
        count, total = self._sums[name]
        return {"count": int(count), "mean": (total / count) if count else None}

    def _note_recent(self, kind: str, n: int) -> None:
        now = self._clock()
        recent = self._recent[kind]
        recent.append((now, n))
        self._prune(recent, now)

    def _prune(self, recent: deque[tuple[float, int]], now: float) -> None:
        while recent and recent[0][0] <= now - self._window:
            recent.popleft()

    def _rate(self, kind: str, now: float) -> float:
        """Per second over the last window (or since start, at least 1 s, when younger)."""
        recent = self._recent[kind]
        self._prune(recent, now)
        span = max(1.0, min(self._window, now - self._started))
        return sum(n for _, n in recent) / span


def _count(n: int) -> int:
    if n < 0:
        raise ValueError(f"a count cannot go down, got {n}")
    return int(n)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT_S)
    except (ConnectionError, TimeoutError):
        writer.transport.abort()  # a peer that does not read must not hold us up
    except asyncio.CancelledError:
        writer.transport.abort()
        raise


async def _respond(
    writer: asyncio.StreamWriter,
    status: HTTPStatus,
    body: bytes | None = None,
    content_type: str = "text/plain; charset=utf-8",
    *,
    headers: Mapping[str, str] | None = None,
    head_only: bool = False,
) -> None:
    if body is None:
        body = f"{status.value} {status.phrase}\n".encode()
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
