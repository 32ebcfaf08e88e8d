"""Operator access over MQTT: the retained fleet summary and signed operator requests.

Operators reach the broker, never the orchestrator's disk. :class:`OperatorDesk` runs as one
task of the service (``ops``) and

- publishes a signed :class:`~schemas.messages.FleetSummary`, retained, on ``fl/{fed}/fleet``
  every ``[ops] fleet_interval_s`` (refreshing the fleet gauges of the metrics on the way);
- answers :class:`~schemas.messages.OperatorRequest`\\ s from ``fl/{fed}/ops/request/{op}`` with a
  signed :class:`~schemas.messages.OperatorResponse` on the MQTT 5 *response topic* the
  request names, echoing its correlation data.

The broker lets account ``op`` publish only on its own request topic, so the topic names the
sender. The response topic must be ``fl/{fed}/ops/reply/{op}`` of that same account (or below
it; another account's is refused as ``sender_mismatch``, unanswered, so nobody can aim replies
at someone else): the ACL lets only that account read it, and it names the key the request must
verify against (verified before anything inside is unpacked). Then: the signed sender is that
operator, the federation and clock match, the key's role is ``operator`` (a device key gets
``not_authorized``) and it is active, and the seq is fresh in the operator's replay window.
Every refusal is counted (``ops.rejected.<reason>``) and audited; every command that runs is
audited as ``operator_command``. The commands (:data:`orchestrator.ops.commands.COMMANDS`) and
the summary read the same figures, from :class:`~orchestrator.ops.views.OperatorViews`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.clock import Clock
from orchestrator.config import Config
from orchestrator.devices.registry import Registry
from orchestrator.devices.replay_book import ReplayBook
from orchestrator.devices.reports import status_reason
from orchestrator.link.mqtt import NotConnectedError
from orchestrator.link.sender import Outbound
from orchestrator.metrics.prometheus import Metrics
from orchestrator.ops.commands import COMMANDS, CommandError
from orchestrator.ops.views import OperatorViews
from orchestrator.store import AuditEvent, Store
from orchestrator.versions.head import VersionHead
from schemas.envelope import check_header, decode_body, verify
from schemas.errors import FedmqError, Reason
from schemas.messages import FleetSummary, OperatorRequest, OperatorResponse
from schemas.replay import Verdict
from schemas.topics import ORCHESTRATOR_SENDER, valid_id

__all__ = ["OperatorDesk"]

log = logging.getLogger(__name__)

_QUEUE = 64
_MAX_CORRELATION = 256


@dataclass(frozen=True)
class _Request:
    payload: bytes
    sender: str
    """The account whose request topic it came on."""
    response_topic: str
    correlation: bytes
    received_ms: int


class _Refused(Exception):
    def __init__(self, reason: Reason, detail: str, operator: str | None, *,
                 answer: bool = True) -> None:
        """``operator``: whom the refusal is audited against; ``answer``: whether it is told
        (on its own reply topic)."""
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.operator = operator
        self.answer = answer and operator is not None


# -- the desk ------------------------------------------------------------------------------------


class OperatorDesk:
    """See the module docstring. Operators share the registry and its replay windows
    (``book``) with devices."""

    def __init__(
        self,
        views: OperatorViews,
        *,
        config: Config,
        store: Store,
        head: VersionHead,
        registry: Registry,
        book: ReplayBook,
        outbound: Outbound,
        metrics: Metrics,
        counters: MutableMapping[str, int],
        clock: Clock,
    ) -> None:
        """``views``: what the commands and the retained summary read."""
        self._views = views
        self._store = store
        self._head = head
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
        self._reply_prefix = outbound.topics.ops_reply_prefix

    # -- intake (called from the MQTT receive loop: never blocks) -------------------------------

    def submit(self, message: aiomqtt.Message, sender: str, received_ms: int) -> None:
        payload = message.payload
        props = message.properties
        topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", b"") if props is not None else b""
        if not isinstance(payload, bytes | bytearray) or not payload:
            self._counters["ops.dropped.empty"] += 1
            return
        request = _Request(bytes(payload), sender, topic if isinstance(topic, str) else "",
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
        await self._store.append_audit(AuditEvent(
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
            result = await handler(self._views, command.args, operator)
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
                           f"{self._reply_prefix}OPERATOR", request.sender, answer=False)
        if operator != request.sender:
            raise _Refused(Reason.SENDER_MISMATCH,
                           f"{request.sender!r} named {operator!r}'s reply topic",
                           request.sender, answer=False)
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
        await self._store.append_audit(AuditEvent(
            "rejected", ORCHESTRATOR_SENDER, device=refusal.operator, reason=refusal.reason.value,
            detail={"message": "ops_request", "detail": refusal.detail[:200]}))
        # counted once audited: whoever watches the counter then finds the audit row
        self._counters[f"ops.rejected.{refusal.reason.value}"] += 1
        if not refusal.answer or refusal.operator is None:
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

    # -- the retained summary --------------------------------------------------------------------

    async def publish_fleet(self) -> None:
        """Refresh the fleet gauges and publish the retained summary (skipped, counted, while
        disconnected)."""
        fleet = await self._views.fleet()
        federation = await self._views.federation(fleet)
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
        if self._head.version >= 0:
            m.set_version(self._head.version)
        m.set_stopped(self._head.stopped)
        if federation["privacy_epsilon"] is not None:
            m.set_privacy_epsilon(federation["privacy_epsilon"])


# -- helpers -------------------------------------------------------------------------------------


def _bounded_json(value: Any, limit: int = 500) -> Any:
    """``value`` as JSON-able data for the audit log, or its truncated text when large."""
    text = json.dumps(value, default=lambda o: repr(o)[:100], sort_keys=True)
    return json.loads(text) if len(text) <= limit else text[:limit]
