"""Every key of the store's ``server_state`` table, in one place.

The table holds the service's small durable values, each written in the transaction of the
change it belongs to (the optimizer's moments with the version they produced, a device's
isolation flags with the screening that raised them). Renaming a member breaks existing
databases: add new keys, never reuse a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Protocol

__all__ = ["ServerState", "StateKey"]


class StateKey(StrEnum):
    SEQ_LIMIT = "orchestrator_seq_limit"
    """Every orchestrator seq below this may have been used (see ``link.seqs``)."""
    PUBLISHED_CHUNKS = "published_chunks"
    """JSON list of the retained model-chunk topics, cleared when superseded."""
    OPTIMIZER = "optimizer"
    """The server optimizer's moments, as of the latest version."""
    STOPPING = "stopping"
    """The stopping rules' progress (best metric, versions since the best, start time)."""
    STOPPED = "stopped"
    """JSON ``{reason, version, ts_ms}`` once a stopping rule fired."""
    RESUME_REQUEST = "resume_request"
    """JSON ``{actor, reason, requested_ms}``: ``fedmq federation resume --config`` asked to
    lift the stop (cleared by any resume; see ``convergence.resume``)."""
    STOP_REASON = "stop_reason"
    """A bare stop reason written by older tools; read by reports, never written."""
    REGISTRY_GENERATION = "registry_generation"
    """A random token bumped by every process that changes devices (see ``devices.registry``)."""
    SCREEN = "robust.screen"
    """The anomaly screen's history (norms and the reference direction)."""
    ISOLATION = "robust.isolation"
    """Each device's recent screening flags."""
    ACCOUNTANT = "privacy.accountant"
    """The federation's privacy accountant (its steps so far)."""
    PRIVACY_POLICY = "privacy.policy"
    """The differential-privacy settings the accountant's steps were made with."""
    ROLLBACK_REQUEST = "rollback_request"
    """A pending ``fedmq model rollback`` request."""
    ROLLBACK_APPLIED = "rollback_applied"
    """The id of the last rollback request applied, and the version it made."""
    FLOODED = "limits.flooded"
    """JSON ``{device: until_ms}``: senders isolated for flooding and when their cooldown
    ends (0: only an operator reinstates them)."""
    REVOCATIONS = "revocations"
    """JSON ``{device: {sent_ms, done}}``: when each revoked device's ``Control(revoke)`` was
    published and whether its broker credential is gone (see ``devices.revocation``)."""
    KEY_ROTATION = "orchestrator_key.rotation"
    """JSON: the latest rotation of the orchestrator's own key — its phase (requested,
    announced, retired), both public keys, the grace, and the signed announcement (see
    ``link.keyring``)."""

    ROTATE_REQUESTS = "rotate.requests"
    """JSON ``{device: requested_ms}``: ``fedmq device rotate`` asked for a key rotation
    (written by the CLI only; see ``devices.rotation``)."""
    PASSWORD_REQUESTS = "password.requests"
    """JSON ``{device: requested_ms}``: ``fedmq device rotate --password`` asked for a new
    broker password (written by the CLI only; see ``devices.passwords``)."""
    PASSWORD_ROTATIONS = "password.rotations"
    """JSON ``{device: {requested_ms, password, digest, offered_ms, sent_ms, done}}``: each
    broker password rotation in progress (the new password until the switch) or done."""
    ROTATIONS = "rotate.handled"
    """JSON ``{device: {requested_ms, sent_ms, done}}``: the service's progress on each
    request (``Control(rotate_key)`` sent when, and whether the device rotated since)."""


class ServerState(Protocol):
    """The part of the store that holds server-state values (:class:`~.store.Store` has it;
    tests may use a dict)."""

    async def get_server_state(self, key: str) -> bytes | None: ...

    async def put_server_state(self, entries: Mapping[str, bytes]) -> None: ...
