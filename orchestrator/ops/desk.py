"""Operator access over MQTT: the retained fleet summary and signed operator requests.

Operators reach the broker, never the orchestrator's disk. :class:`OperatorDesk` runs as one
task of the service (``ops``) and

- publishes a signed :class:`~schemas.messages.FleetSummary`, retained, on ``fl/{fed}/fleet``
  every ``[ops] fleet_interval_s`` (refreshing the fleet gauges of the metrics on the way);
- answers :class:`~schemas.messages.OperatorRequest`\\ s from ``fl/{fed}/ops/request`` with a
  signed :class:`~schemas.messages.OperatorResponse` on the MQTT 5 *response topic* the
  request names, echoing its correlation data.

The response topic must be ``fl/{fed}/ops/reply/{operator}`` (or below it): the broker ACL
lets only that account read it, and it names the key the request must verify against
(verified before anything inside is unpacked). Then: the signed sender is that operator, the
federation and clock match, the key's role is ``operator`` (a device key gets
``not_authorized``) and it is active, and the seq is fresh in the operator's replay window.
Every refusal is counted (``ops.rejected.<reason>``) and audited; every command that runs is
audited as ``operator_command``. The commands are read-only views over the store and the
service (:data:`COMMANDS`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.clock import Clock
from orchestrator.config import Config
from orchestrator.convergence.stopping import StoppingState
from orchestrator.devices.registry import Registry
from orchestrator.devices.replay_book import ReplayBook
from orchestrator.devices.reports import status_reason
from orchestrator.devices.selection import OutstandingTasks
from orchestrator.errors import OrchestratorError
from orchestrator.ingest.buffer_cache import Buffer
from orchestrator.link.mqtt import NotConnectedError
from orchestrator.link.sender import Outbound
from orchestrator.metrics.prometheus import Metrics
from orchestrator.ops.fleet_summary import fleet_rows, fleet_totals
from orchestrator.privacy import (
    DpPolicy,
    FederationAccountant,
    PrivacySummary,
    summarize,
)
from orchestrator.store import AuditEvent, AuditRecord, Device, Store
from orchestrator.store.state_keys import StateKey
from orchestrator.versions.head import VersionHead
from schemas.envelope import check_header, decode_body, verify
from schemas.errors import FedmqError, Reason
from schemas.messages import FleetSummary, OperatorRequest, OperatorResponse
from schemas.replay import Verdict
from schemas.signing import key_id
from schemas.topics import ORCHESTRATOR_SENDER, valid_id

__all__ = [
    "COMMANDS",
    "MAX_AUDIT_LIMIT",
    "CommandError",
    "OperatorDesk",
]

log = logging.getLogger(__name__)

MAX_AUDIT_LIMIT = 1000
_QUEUE = 64
_MAX_CORRELATION = 256
_EVALUATIONS = 5


class CommandError(OrchestratorError):
    """A command's arguments are wrong; the message goes back to the operator."""


@dataclass(frozen=True)
class _Request:
    payload: bytes
    response_topic: str
    correlation: bytes
    received_ms: int


class _Refused(Exception):
    def __init__(self, reason: Reason, detail: str, operator: str | None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.operator = operator


# -- commands ------------------------------------------------------------------------------------


Command = Callable[["OperatorDesk", Mapping[str, Any]], Awaitable[Any]]


def _arg(args: Mapping[str, Any], name: str, kind: type | tuple[type, ...],
         default: Any = None) -> Any:
    value = args.get(name, default)
    if value is None:
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise CommandError(f"argument {name!r} has the wrong type ({type(value).__name__})")
    return value


async def _ping(desk: OperatorDesk, args: Mapping[str, Any]) -> Any:
    return {"pong": True, "version": desk.head.version}


async def _fleet_status(desk: OperatorDesk, args: Mapping[str, Any]) -> Any:
    return await desk.fleet()


async def _federation_status(desk: OperatorDesk, args: Mapping[str, Any]) -> Any:
    return await desk.federation()


async def _device_list(desk: OperatorDesk, args: Mapping[str, Any]) -> Any:
    role = _arg(args, "role", str)
    if role not in (None, "device", "operator"):
        raise CommandError(f"role must be device or operator, not {role!r}")
    devices = await desk.store.list_devices(role=role)
    return [{"device_id": d.device_id, "role": d.role, "status": d.status,
             "key_id": key_id(d.public_key) if d.public_key else None,
             "class": d.device_class, "created_ms": d.created_ms, "enrolled_ms": d.enrolled_ms,
             "last_seen_ms": d.last_seen_ms, "accepted": d.accepted_count,
             "rejected": d.rejected_count, "quarantined": d.quarantine_count}
            for d in devices]


async def _audit_list(desk: OperatorDesk, args: Mapping[str, Any]) -> Any:
    events = _arg(args, "event", (str, list))
    if isinstance(events, list) and not all(isinstance(e, str) for e in events):
        raise CommandError("argument 'event' must be a string or a list of strings")
    limit = _arg(args, "limit", int, 50)
    if not 0 < limit <= MAX_AUDIT_LIMIT:
        raise CommandError(f"limit must be in 1..{MAX_AUDIT_LIMIT}, got {limit}")
    records = await desk.store.list_audit(
        since_ms=_arg(args, "since_ms", int), until_ms=_arg(args, "until_ms", int),
        event=events or None, device=_arg(args, "device", str), actor=_arg(args, "actor", str),
        limit=limit)
    return [_audit_row(r) for r in records]


def _audit_row(r: AuditRecord) -> dict[str, Any]:
    return {"id": r.id, "ts_ms": r.ts_ms, "event": r.event, "actor": r.actor,
            "device": r.device, "reason": r.reason, "detail": r.detail}


async def _privacy_report(desk: OperatorDesk, args: Mapping[str, Any]) -> Any:
    summary = await desk.privacy()
    return summary.to_dict() if summary is not None else {"enabled": False, "epsilon": None,
                                                          "devices": []}


COMMANDS: dict[str, Command] = {
    "ping": _ping,
    "fleet.status": _fleet_status,
    "federation.status": _federation_status,
    "device.list": _device_list,
    "audit.list": _audit_list,
    "privacy.report": _privacy_report,
}
"""Operator commands by name; each takes the request's ``args`` map."""


# -- the desk ------------------------------------------------------------------------------------


class OperatorDesk:
    """See the module docstring. Operators share the registry and its replay windows
    (``book``) with devices."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        head: VersionHead,
        buffer: Buffer,
        outstanding: OutstandingTasks,
        registry: Registry,
        book: ReplayBook,
        outbound: Outbound,
        metrics: Metrics,
        counters: MutableMapping[str, int],
        clock: Clock,
    ) -> None:
        self.config = config
        self.store = store
        self.head = head
        self._buffer = buffer
        self._outstanding = outstanding
        self._registry = registry
        self._book = book
        self._outbound = outbound
        self._metrics = metrics
        self._counters = counters
        self._clock = clock
        self._fed = config.federation.id
        self._interval_s = config.ops.fleet_interval_s
        self._max_bytes = config.broker.max_message_bytes
        self._requests: asyncio.Queue[_Request] = asyncio.Queue(_QUEUE)
        self._reply_prefix = outbound.topics.ops_request.rsplit("/", 1)[0] + "/reply/"
        self._classes: dict[str, str] = {}
        self._privacy_key: tuple[bytes | None, bytes | None] | None = None
        self._privacy: PrivacySummary | None = None

    # -- intake (called from the MQTT receive loop: never blocks) -------------------------------

    def submit(self, message: aiomqtt.Message, received_ms: int) -> None:
        payload = message.payload
        props = message.properties
        topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", b"") if props is not None else b""
        if not isinstance(payload, bytes | bytearray) or not payload:
            self._counters["ops.dropped.empty"] += 1
            return
        request = _Request(bytes(payload), topic if isinstance(topic, str) else "",
                           bytes(correlation or b"")[:_MAX_CORRELATION], received_ms)
        try:
            self._requests.put_nowait(request)
        except asyncio.QueueFull:
            self._counters["ops.dropped.queue_full"] += 1

    # -- the task --------------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._serve(), name="ops-requests")
            tg.create_task(self._fleet_loop(), name="ops-fleet")

    async def _serve(self) -> None:
        while True:
            await self.handle(await self._requests.get())

    async def _fleet_loop(self) -> None:
        while True:
            await self.publish_fleet()
            await self._clock.sleep(self._interval_s)

    # -- requests --------------------------------------------------------------------------------

    async def handle(self, request: _Request) -> None:
        try:
            operator, opened_seq, command = self._authenticate(request)
        except _Refused as refusal:
            await self._refuse(request, refusal)
            return
        verdict = self._book.classify(operator, opened_seq)
        if verdict is not Verdict.FRESH:
            reason = Reason.REPLAY if verdict is Verdict.REPLAY else Reason.DUPLICATE
            await self._refuse(request, _Refused(reason, f"seq {opened_seq}", operator),
                               request_id=command.request_id)
            return
        await self._book.mark_seen(operator, opened_seq)
        await self.store.append_audit(AuditEvent(
            "operator_command", operator, detail={
                "command": command.command[:100], "request_id": command.request_id[:100],
                "args": _bounded_json(command.args)}))
        self._counters[f"ops.command.{command.command}"] += 1
        handler = COMMANDS.get(command.command)
        if handler is None:
            await self._reply(request, operator, OperatorResponse(
                command.request_id, False,
                error=f"unknown_command: {command.command[:100]!r} "
                      f"(known: {', '.join(COMMANDS)})"))
            return
        try:
            result = await handler(self, command.args)
        except CommandError as exc:
            response = OperatorResponse(command.request_id, False, error=f"bad_args: {exc}")
        except Exception:  # an operator query must never take the service down
            log.exception("operator command %r failed", command.command)
            self._counters["ops.failed"] += 1
            response = OperatorResponse(command.request_id, False, error="internal_error")
        else:
            response = OperatorResponse(command.request_id, True, result=result)
        await self._reply(request, operator, response)

    def _operator_of(self, topic: str) -> str | None:
        """The operator a response topic belongs to (None: not an ops reply topic)."""
        if not topic.startswith(self._reply_prefix):
            return None
        parts = topic[len(self._reply_prefix):].split("/")
        if not valid_id(parts[0]) or any(not p or "+" in p or "#" in p for p in parts):
            return None
        return parts[0]

    def _authenticate(self, request: _Request) -> tuple[str, int, OperatorRequest]:
        operator = self._operator_of(request.response_topic)
        if operator is None:
            raise _Refused(Reason.BAD_TOPIC,
                           f"response topic {request.response_topic[:200]!r} is not "
                           f"{self._reply_prefix}OPERATOR", None)
        view = self._registry.get(operator)
        if view is None or view.verify_key is None:
            raise _Refused(Reason.UNKNOWN_SENDER, f"no key for {operator!r}", operator)
        try:
            opened = verify(request.payload, view.verify_key)
            check_header(opened.header, fed=self._fed, sender=operator,
                         now_ms=request.received_ms)
        except FedmqError as exc:
            raise _Refused(exc.reason, exc.detail, operator) from None
        if view.role != "operator":
            raise _Refused(Reason.NOT_AUTHORIZED, f"{operator!r} has the {view.role} role, "
                           "not operator", operator)
        if view.status != "active":
            raise _Refused(status_reason(view.status), f"operator is {view.status}", operator)
        try:
            command = decode_body(opened, OperatorRequest)
        except FedmqError as exc:
            raise _Refused(exc.reason, exc.detail, operator) from None
        return operator, opened.header.seq, command

    async def _refuse(self, request: _Request, refusal: _Refused, *,
                      request_id: str | None = None) -> None:
        log.info("operator request refused (%s): %s", refusal.reason.value, refusal.detail)
        await self.store.append_audit(AuditEvent(
            "rejected", ORCHESTRATOR_SENDER, device=refusal.operator, reason=refusal.reason.value,
            detail={"message": "ops_request", "detail": refusal.detail[:200]}))
        # counted once audited: whoever watches the counter then finds the audit row
        self._counters[f"ops.rejected.{refusal.reason.value}"] += 1
        if refusal.operator is None:
            return  # nowhere the sender alone can read: no answer
        if request_id is None:
            request_id = request.correlation.decode("utf-8", "replace")[:100]
        await self._reply(request, refusal.operator, OperatorResponse(
            request_id, False, error=refusal.reason.value))

    async def _reply(self, request: _Request, operator: str,
                     response: OperatorResponse) -> None:
        payload = await self._outbound.sign(response, to=operator)
        if len(payload) > self._max_bytes:
            payload = await self._outbound.sign(OperatorResponse(
                response.request_id, False, error="too_large: narrow the request (limit)"),
                to=operator)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if request.correlation:
            props.CorrelationData = request.correlation
        try:
            await self._outbound.publish(request.response_topic, payload, qos=1,
                                         properties=props)
        except NotConnectedError:
            self._counters["dropped.ops_reply"] += 1

    # -- views -----------------------------------------------------------------------------------

    async def fleet(self) -> dict[str, Any]:
        """``fleet.status``: every device row plus the fleet totals."""
        devices = await self.store.list_devices(role="device")
        privacy = await self.privacy()
        spend = ({d.device_id: _finite(d.epsilon) for d in privacy.devices}
                 if privacy is not None else {})
        now = self._clock.wall_ms()
        rows = fleet_rows(devices, now_ms=now, current_version=self.head.version,
                          heartbeat_s=self.config.federation.heartbeat_s,
                          classes=await self._device_classes(devices), privacy=spend)
        totals = fleet_totals(rows)
        return {"ts_ms": now, "federation": self._fed, "version": self.head.version,
                "totals": totals.to_dict(), "devices": rows}

    async def federation(self, fleet: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``federation.status``: version, buffer, ingest, evaluations, stopping rules."""
        cfg, store, head = self.config, self.store, self.head
        if fleet is None:
            fleet = await self.fleet()
        snap = self._metrics.snapshot()
        versions = await store.list_versions()
        evaluations = [_evaluation(v.version, v.created_ms, v.metrics)
                       for v in versions[-_EVALUATIONS:]]
        raw = await store.get_server_state(StateKey.STOPPING)
        state = StoppingState.from_bytes(raw) if raw is not None else None
        s = cfg.stopping
        privacy = await self.privacy()
        return {
            "federation": self._fed,
            "ts_ms": self._clock.wall_ms(),
            "mode": cfg.aggregation.mode,
            "version": head.version,
            "published_version": head.published_version,
            "buffer": {"fill": self._buffer.count, "capacity": cfg.aggregation.k},
            "outstanding_tasks": len(self._outstanding),
            "ingest": {"rate_per_s": snap["rate_per_s"], "updates": snap["updates"],
                       "latency_s": snap["ingest_latency_s"]},
            "devices": fleet["totals"],
            "last_evaluations": evaluations,
            "stopping": {
                "enabled": s.enabled, "stopped": head.stopped is not None,
                "reason": head.stopped,
                "rules": {"target_metric": s.target_metric, "patience": s.patience,
                          "min_delta": s.min_delta, "max_versions": s.max_versions,
                          "max_wall_s": s.max_wall_s},
                "best_metric": state.best_metric if state else None,
                "best_version": state.best_version if state else None,
                "since_best": state.since_best if state else 0,
                "started_ms": state.started_ms if state else None,
            },
            "privacy_epsilon": _finite(privacy.epsilon) if privacy is not None else None,
        }

    async def privacy(self) -> PrivacySummary | None:
        """The privacy report (None: differential privacy was never used); recomputed only
        when the accountant or the policy changed (the PLD accountant takes seconds)."""
        store = self.store
        policy_state = await store.get_server_state(StateKey.PRIVACY_POLICY)
        accountant_state = await store.get_server_state(StateKey.ACCOUNTANT)
        if policy_state is None and accountant_state is None:
            return None
        key = (policy_state, accountant_state)
        if key != self._privacy_key:
            records = await store.privacy_ledger()
            devices = await store.list_devices(role="device")
            policy = DpPolicy.from_bytes(policy_state) if policy_state is not None else None
            accountant = (FederationAccountant.from_state(accountant_state)
                          if accountant_state is not None else None)
            self._privacy = await asyncio.to_thread(
                summarize, policy, accountant, records, [d.device_id for d in devices])
            self._privacy_key = key
        return self._privacy

    async def _device_classes(self, devices: list[Device]) -> dict[str, str]:
        """Device classes the registry does not hold, from each device's latest accepted
        update (looked up once per device, and only for devices with one)."""
        for d in devices:
            if (d.device_class or d.device_id in self._classes
                    or d.accepted_count + d.quarantine_count == 0):
                continue
            latest = await self.store.ledger(
                sender=d.device_id, status=("buffered", "applied", "quarantined"), limit=1,
                newest_first=True)
            klass = latest[0].meta.get("device_class") if latest else None
            if isinstance(klass, str) and klass:
                self._classes[d.device_id] = klass
        return self._classes

    # -- the retained summary --------------------------------------------------------------------

    async def publish_fleet(self) -> None:
        """Refresh the fleet gauges and publish the retained summary (skipped, counted, while
        disconnected)."""
        fleet = await self.fleet()
        federation = await self.federation(fleet)
        self._meter(fleet, federation)
        devices: list[dict[str, Any]] = fleet["devices"]
        summary = FleetSummary(ts_ms=fleet["ts_ms"], federation=federation, devices=devices)
        payload = await self._outbound.sign(summary)
        if len(payload) > self._max_bytes:
            # too many devices for one message: the totals still go out; the rows are one
            # `fedmq fleet status` away
            self._counters["ops.fleet_truncated"] += 1
            payload = await self._outbound.sign(FleetSummary(ts_ms=fleet["ts_ms"], federation={
                **federation, "devices_truncated": True}, devices=[]))
        try:
            await self._outbound.publish(self._outbound.topics.fleet, payload, qos=1,
                                         retain=True)
        except NotConnectedError:
            self._counters["dropped.fleet"] += 1
            return
        self._counters["ops.fleet_published"] += 1

    def _meter(self, fleet: Mapping[str, Any], federation: Mapping[str, Any]) -> None:
        m = self._metrics
        totals = fleet["totals"]
        m.set_online(totals["online"])
        m.set_devices_by_state(totals["by_state"])
        m.set_outbox_backlog(totals["outbox_backlog"])
        m.set_buffer(federation["buffer"]["fill"], federation["buffer"]["capacity"])
        if self.head.version >= 0:
            m.set_version(self.head.version)
        m.set_stopped(self.head.stopped)
        if federation["privacy_epsilon"] is not None:
            m.set_privacy_epsilon(federation["privacy_epsilon"])


# -- helpers -------------------------------------------------------------------------------------


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _bounded_json(value: Any, limit: int = 500) -> Any:
    """``value`` as JSON-able data for the audit log, or its truncated text when large."""
    text = json.dumps(value, default=lambda o: repr(o)[:100], sort_keys=True)
    return json.loads(text) if len(text) <= limit else text[:limit]


def _evaluation(version: int, created_ms: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A version's evaluations: the server's, and the federated ones weighted by samples."""
    server = {k[len("server_"):]: v for k, v in metrics.items() if k.startswith("server_")}
    samples, loss, metric = 0, 0.0, 0.0
    for name, entry in metrics.items():
        if name.startswith("federated/") and isinstance(entry, dict):
            n = entry.get("samples")
            if isinstance(n, int) and n > 0 and _finite(entry.get("loss")) is not None \
                    and _finite(entry.get("metric")) is not None:
                samples += n
                loss += n * entry["loss"]
                metric += n * entry["metric"]
    federated = ({"devices": sum(1 for k in metrics if k.startswith("federated/")),
                  "samples": samples, "loss": loss / samples, "metric": metric / samples}
                 if samples else None)
    return {"version": version, "created_ms": created_ms, "updates": metrics.get("updates"),
            "server": server or None, "federated": federated}
