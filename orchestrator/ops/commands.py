"""The operator commands: views over the store and the service, by name; one changes
something (``federation.resume``, which lifts a stop).

:class:`~orchestrator.ops.desk.OperatorDesk` authenticates a request, then runs
``COMMANDS[request.command](views, request.args, operator)`` and sends back what it returns
(JSON-able data), or ``bad_args`` when it raises :class:`CommandError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from orchestrator.convergence.stopper import NotStoppedError
from orchestrator.errors import OrchestratorError
from orchestrator.ops.views import OperatorViews
from orchestrator.store import AuditRecord
from schemas.signing import key_id

__all__ = ["COMMANDS", "MAX_AUDIT_LIMIT", "Command", "CommandError"]

MAX_AUDIT_LIMIT = 1000


class CommandError(OrchestratorError):
    """A command's arguments are wrong; the message goes back to the operator."""


Command = Callable[[OperatorViews, Mapping[str, Any], str], Awaitable[Any]]
"""``(views, args, operator)``: the operator is the authenticated account asking."""


def _arg(args: Mapping[str, Any], name: str, kind: type | tuple[type, ...],
         default: Any = None) -> Any:
    value = args.get(name, default)
    if value is None:
        return None
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise CommandError(f"argument {name!r} has the wrong type ({type(value).__name__})")
    return value


async def _ping(views: OperatorViews, args: Mapping[str, Any], operator: str) -> Any:
    return {"pong": True, "version": views.head.version}


async def _fleet_status(views: OperatorViews, args: Mapping[str, Any], operator: str) -> Any:
    return await views.fleet()


async def _federation_status(views: OperatorViews, args: Mapping[str, Any], operator: str) -> Any:
    return await views.federation()


async def _device_list(views: OperatorViews, args: Mapping[str, Any], operator: str) -> Any:
    role = _arg(args, "role", str)
    if role not in (None, "device", "operator"):
        raise CommandError(f"role must be device or operator, not {role!r}")
    devices = await views.store.list_devices(role=role)
    return [{"device_id": d.device_id, "role": d.role, "status": d.status,
             "key_id": key_id(d.public_key) if d.public_key else None,
             "class": d.device_class, "created_ms": d.created_ms, "enrolled_ms": d.enrolled_ms,
             "last_seen_ms": d.last_seen_ms, "accepted": d.accepted_count,
             "rejected": d.rejected_count, "quarantined": d.quarantine_count}
            for d in devices]


async def _audit_list(views: OperatorViews, args: Mapping[str, Any], operator: str) -> Any:
    events = _arg(args, "event", (str, list))
    if isinstance(events, list) and not all(isinstance(e, str) for e in events):
        raise CommandError("argument 'event' must be a string or a list of strings")
    limit = _arg(args, "limit", int, 50)
    if not 0 < limit <= MAX_AUDIT_LIMIT:
        raise CommandError(f"limit must be in 1..{MAX_AUDIT_LIMIT}, got {limit}")
    records = await views.store.list_audit(
        since_ms=_arg(args, "since_ms", int), until_ms=_arg(args, "until_ms", int),
        event=events or None, device=_arg(args, "device", str), actor=_arg(args, "actor", str),
        limit=limit)
    return [_audit_row(r) for r in records]


def _audit_row(r: AuditRecord) -> dict[str, Any]:
    return {"id": r.id, "ts_ms": r.ts_ms, "event": r.event, "actor": r.actor,
            "device": r.device, "reason": r.reason, "detail": r.detail}


async def _privacy_report(views: OperatorViews, args: Mapping[str, Any], operator: str) -> Any:
    summary = await views.privacy()
    return summary.to_dict() if summary is not None else {"enabled": False, "epsilon": None,
                                                          "devices": []}


async def _federation_resume(views: OperatorViews, args: Mapping[str, Any], operator: str) -> Any:
    reason = _arg(args, "reason", str, "") or "operator request"
    if views.stopper is None:
        raise CommandError("this service cannot resume")
    try:
        return await views.stopper.resume(operator, reason[:500])
    except NotStoppedError as exc:
        raise CommandError(str(exc)) from None


COMMANDS: dict[str, Command] = {
    "ping": _ping,
    "fleet.status": _fleet_status,
    "federation.status": _federation_status,
    "federation.resume": _federation_resume,
    "device.list": _device_list,
    "audit.list": _audit_list,
    "privacy.report": _privacy_report,
}
"""Operator commands by name; each takes the request's ``args`` map."""
