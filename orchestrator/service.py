"""The orchestrator service: the one owner of the store, the decode pool, the MQTT link and
(when embedded) the broker, which runs the parts' loops as named tasks in one TaskGroup.

    async with Orchestrator(config) as orch:   # connected and subscribed on entry
        await orch.wait_for_version(1, published=True)
    # or, for a process: await orch.wait_closed() until the shutdown event is set

The parts are built in :mod:`orchestrator.wiring`; docs/architecture.md follows one update
through them. Tasks: ``mqtt`` (the link; hands every message to the router), ``ingest-decode``
and ``ingest-commit`` (intake), ``control`` (enroll, status, eval lanes), ``aggregate``,
``publish``, ``evaluate`` (if configured), ``privacy`` (if enabled), ``registry`` (other
processes' device changes), ``rollback`` (requests from ``fedmq model rollback``),
``housekeeping`` (deadlines, the wall-clock stopping rule), ``ops`` (operator requests and
the fleet summary), ``flood`` (rate-limit refusals audited, flooders isolated) and ``keys``
(rotation of the orchestrator's own key, see :mod:`orchestrator.link.rotation`). One
shutdown path: setting the shutdown event (injectable) unwinds the TaskGroup; leaving the
context closes what was opened, in reverse. The first thing opened (and so the last released)
is the ``data_dir`` lock (:mod:`orchestrator.data_lock`): a second service on the same
``data_dir`` fails with :class:`~orchestrator.data_lock.DataDirLockedError` before it touches
the key, the store or the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal

import aiomqtt
from nacl.signing import SigningKey

from orchestrator.broker import ORCHESTRATOR_USER, MosquittoBroker
from orchestrator.broker.certs import ensure_client_certificate
from orchestrator.broker.embedded import embedded_broker
from orchestrator.clock import Clock, SystemClock
from orchestrator.config import Config
from orchestrator.data_lock import DataDirLock
from orchestrator.devices.registry import Registry
from orchestrator.errors import OrchestratorError
from orchestrator.ingest.decode_pool import DecodePool
from orchestrator.ingest.pipeline import IngestPolicy
from orchestrator.link.keyring import settle
from orchestrator.link.mqtt import MqttLink, MqttSettings
from orchestrator.link.rotation import load_rotation
from orchestrator.metrics.counters import MeteredCounter
from orchestrator.metrics.prometheus import Metrics, MetricsEndpoint, MetricsServerError
from orchestrator.store import Store
from orchestrator.wiring import Opened, Parts, assemble
from schemas.limits import DEFAULT_LIMITS, Limits
from schemas.tensors import Params
from schemas.topics import Topics

__all__ = ["Orchestrator", "OrchestratorError"]

log = logging.getLogger(__name__)


class _ShutdownRequested(Exception):
    """Unwinds the TaskGroup when the shutdown event is set."""


class Orchestrator:
    """The service. See the module docstring for the tasks it runs.

    Args:
        config: a validated :class:`~orchestrator.config.Config`.
        shutdown: set it to stop the service (default: a private event; see
            :meth:`request_shutdown`).
        clock: wall and monotonic time and sleep for every loop (tests pass a fake one).
        rng: randomness for task ids and backoff jitter (tests seed it).
        tap: sees every received message first, before it is queued (benchmarks count
            bytes with it); it must not block.
        store_synchronous: SQLite durability, overriding ``ingest.synchronous`` (``FULL``:
            fsync every commit; ``NORMAL``: survives a process crash only; see the store).
    """

    def __init__(
        self,
        config: Config,
        *,
        shutdown: asyncio.Event | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        store_synchronous: Literal["FULL", "NORMAL"] | None = None,
        tap: Callable[[aiomqtt.Message], None] | None = None,
    ) -> None:
        self.config = config
        self._tap = tap
        self._shutdown = shutdown if shutdown is not None else asyncio.Event()
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._synchronous: Literal["FULL", "NORMAL"] = (
            store_synchronous if store_synchronous is not None
            else "NORMAL" if config.ingest.synchronous == "NORMAL" else "FULL")
        self._stack = contextlib.AsyncExitStack()
        self._runner: asyncio.Task[None] | None = None
        self._entered = False
        self.metrics = Metrics(federation=config.federation.id)
        """Prometheus metrics, fed through ``counters`` (see orchestrator.metrics.counters)."""
        self.metrics_endpoint: MetricsEndpoint | None = None
        """Where ``GET /metrics`` is served (``[metrics] port`` set), else None."""
        self.counters: Counter[str] = MeteredCounter(self.metrics)
        """Ingestion and protocol counters (``accepted``, ``duplicate``, ``rejected.<reason>``,
        ``versions``, ...)."""
        self._store: Store | None = None
        self._broker: MosquittoBroker | None = None
        self._key: SigningKey | None = None
        self._parts: Parts | None = None
        self._data_lock: DataDirLock | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            raise OrchestratorError("the orchestrator is not running")
        return self._store

    @property
    def broker(self) -> MosquittoBroker | None:
        """The embedded broker (None when an external one is configured)."""
        return self._broker

    @property
    def public_key(self) -> bytes:
        """The public half of the key the service signs with now (it changes when a
        rotation is announced)."""
        if self._parts is not None:
            return bytes(self._parts.keys.keys.current.verify_key)
        if self._key is None:
            raise OrchestratorError("the orchestrator is not running")
        return bytes(self._key.verify_key)

    @property
    def _running(self) -> Parts:
        if self._parts is None:
            raise OrchestratorError("the orchestrator is not running")
        return self._parts

    @property
    def registry(self) -> Registry:
        """The running service's view of the devices."""
        return self._running.registry

    @property
    def version(self) -> int:
        """The latest committed model version (-1 before the service started)."""
        return self._parts.head.version if self._parts is not None else -1

    @property
    def published_version(self) -> int | None:
        return self._parts.head.published_version if self._parts is not None else None

    @property
    def params(self) -> Params:
        """The latest version's parameters (do not modify)."""
        return self._running.head.current.params

    @property
    def buffered(self) -> int:
        return self._parts.buffer.count if self._parts is not None else 0

    @property
    def stopped_reason(self) -> str | None:
        return self._parts.head.stopped if self._parts is not None else None

    @property
    def outstanding_tasks(self) -> int:
        return len(self._parts.outstanding) if self._parts is not None else 0

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def wait_for_version(self, version: int, *, published: bool = False) -> None:
        """Until ``version`` is committed (and, with ``published``, retained on the broker).
        Wrap it in ``asyncio.timeout``."""
        def reached(head: object) -> bool:
            if published:
                return self.published_version is not None and self.published_version >= version
            return self.version >= version

        await self._running.head.wait_until(reached)

    async def wait_stopped(self) -> str:
        """Until a stopping rule fires; returns its reason."""
        await self._running.head.wait_until(lambda head: head.stopped is not None)
        reason = self.stopped_reason
        assert reason is not None
        return reason

    async def wait_closed(self) -> None:
        """Until the service stops (shutdown event or a fatal error, which is raised)."""
        if self._runner is None:
            raise OrchestratorError("the orchestrator is not running")
        await asyncio.shield(self._runner)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Orchestrator:
        if self._entered:
            raise OrchestratorError("an Orchestrator can be entered once")
        self._entered = True
        try:
            await self._start()
        except BaseException:
            await self._stop_everything()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        error = await self._stop_everything()
        if error is not None and exc is None:
            raise error

    async def _stop_everything(self) -> BaseException | None:
        self._shutdown.set()
        error: BaseException | None = None
        if self._runner is not None:
            try:
                await self._runner
            except BaseException as exc:  # reported to the caller
                error = exc
        await self._stack.aclose()  # the data_dir lock last
        self._store = None
        self._data_lock = None
        return error

    async def _start(self) -> None:
        cfg = self.config
        # first, and synchronously (a cancellation cannot leave it taken but unowned): the
        # key, the store and the broker of this data_dir are ours alone until the stack closes
        self._data_lock = self._stack.enter_context(DataDirLock(cfg.federation.data_dir))
        store = self._store = await self._stack.enter_async_context(
            Store.open(cfg.federation.store_path, clock=self._clock.wall_ms,
                       synchronous=self._synchronous, federation_id=cfg.federation.id))
        # a rotation of our own key may be half done: finish its file switch first
        keys = await asyncio.to_thread(settle, cfg.federation.key_path,
                                       await load_rotation(store))
        key = self._key = keys.current
        decoder = await self._stack.enter_async_context(
            DecodePool(cfg.ingest.decode_workers, _ingest_policy(cfg), keys.unseal))
        link = MqttLink(await self._link_settings(), rng=self._rng, clock=self._clock)
        self._parts = await assemble(Opened(
            config=cfg, store=store, key=key, keys=keys, decoder=decoder, link=link,
            metrics=self.metrics, counters=self.counters, clock=self._clock, rng=self._rng,
            tap=self._tap))
        if cfg.metrics.port is not None:
            try:
                self.metrics_endpoint = await self._stack.enter_async_context(
                    self.metrics.serve(cfg.metrics.host, cfg.metrics.port))
            except MetricsServerError as exc:
                raise OrchestratorError(str(exc)) from exc
            log.info("metrics at %s", self.metrics_endpoint.url)
        self._runner = asyncio.create_task(self._run(self._parts), name="orchestrator")
        await self._wait_connected(link)
        log.info("orchestrator for %r up: version %d, %d buffered, broker %s:%d",
                 cfg.federation.id, self.version, self.buffered, link.host, link.port)

    async def _link_settings(self) -> MqttSettings:
        """Starts the embedded broker, if configured, and says where the broker is."""
        cfg = self.config
        if cfg.broker.embedded:
            assert self._data_lock is not None  # taken first in _start
            self._broker = await self._stack.enter_async_context(
                embedded_broker(cfg, self._data_lock))
            host, port = self._broker.host, self._broker.port
            username: str | None = ORCHESTRATOR_USER
            password: str | None = self._broker.orchestrator_password
        else:
            host, port = cfg.broker.host, cfg.broker.port
            username, password = cfg.broker.username, cfg.broker.password
        topics = Topics(cfg.federation.id)
        cert_file, key_file = await asyncio.to_thread(_own_certificate, cfg)
        return MqttSettings(
            host=host, port=port, username=username, password=password,
            client_id=topics.orchestrator_client_id,
            subscriptions=[topics.up_all, topics.ops_requests], tls=cfg.broker.tls,
            ca_file=cfg.broker.ca_file, cert_file=cert_file, key_file=key_file,
            keepalive_s=cfg.broker.keepalive_s, session_expiry_s=cfg.broker.session_expiry_s)

    async def _wait_connected(self, link: MqttLink) -> None:
        assert self._runner is not None
        waiter = asyncio.create_task(link.wait_connected())
        limit = self.config.broker.connect_timeout_s
        done, _ = await asyncio.wait({waiter, self._runner}, timeout=limit,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            return
        waiter.cancel()
        if self._runner in done:
            self._runner.result()  # raises the runner's error
        why = f": {link.last_error}" if link.last_error else ""
        raise OrchestratorError(f"cannot connect to the MQTT broker at {link.host}:{link.port} "
                                f"within {limit:g}s{why}")

    async def _run(self, parts: Parts) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for name, loop in parts.loops:
                    tg.create_task(loop(), name=name)
                tg.create_task(self._await_shutdown(), name="shutdown")
        except* _ShutdownRequested:
            log.info("orchestrator for %r stopped", self.config.federation.id)

    async def _await_shutdown(self) -> None:
        await self._shutdown.wait()
        raise _ShutdownRequested


def _ingest_policy(cfg: Config) -> IngestPolicy:
    return IngestPolicy(
        fed=cfg.federation.id,
        limits=Limits(max_envelope_bytes=max(DEFAULT_LIMITS.max_envelope_bytes,
                                             cfg.ingest.max_update_bytes),
                      max_body_bytes=cfg.ingest.max_body_bytes),
        max_update_bytes=cfg.ingest.max_update_bytes,
        max_staleness=cfg.aggregation.max_staleness,
        max_update_norm=cfg.aggregation.max_update_norm,
    )


def _own_certificate(cfg: Config) -> tuple[Path | None, Path | None]:
    """Our client certificate and key when the broker requires one: the configured pair, or
    one issued (once) into ``data_dir/tls`` with the CN of our broker account."""
    b = cfg.broker
    if not b.client_certificates:
        return None, None
    if b.cert_file is not None:
        return b.cert_file, b.key_file
    assert b.ca_file is not None and b.ca_key_file is not None  # the config checks both
    return ensure_client_certificate(cfg.federation.tls_dir, b.username, ca_file=b.ca_file,
                                     ca_key_file=b.ca_key_file, days=b.client_cert_days)
