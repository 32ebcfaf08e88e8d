"""The ``[limits]`` table: per-sender rates, checked before any signature or database work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from ._fields import ge, gt

__all__ = ["LimitsConfig"]

_MiB = 1024 * 1024


@dataclass(frozen=True)
class LimitsConfig:
    """Token buckets per sender (a device or operator account): a message over its lane's
    rate, or over the sender's byte rate, is dropped unread and counted; its refusals are
    audited coalesced, and a sender refused for ``flood_after_s`` on end (or
    ``flood_after_refused`` times on end) is isolated and its broker login suspended.

    The defaults leave honest traffic far below the limits: a device sends an update batch
    per task and a status per heartbeat (10 s); a whole offline outbox goes in a few batches
    of up to ``ingest.max_update_bytes`` each."""

    updates_per_s: Annotated[float, gt(0), "update batches per second per device"] = 2.0
    updates_burst: Annotated[int, ge(1), "update batches a device may send at once"] = 20
    control_per_s: Annotated[float, gt(0), "enroll, status and eval messages per second "
                             "per device"] = 5.0
    control_burst: Annotated[int, ge(1), "control messages a device may send at once"] = 50
    ops_per_s: Annotated[float, gt(0), "operator requests per second per account"] = 2.0
    ops_burst: Annotated[int, ge(1), "operator requests an account may send at once"] = 20
    bytes_per_s: Annotated[int, ge(1024), "bytes per second per sender, all lanes"] = (
        4 * _MiB)
    bytes_burst: Annotated[int, ge(1024), "bytes a sender may send at once (at least "
                           "ingest.max_update_bytes)"] = 32 * _MiB
    flood_after_s: Annotated[float, gt(0), "refused without a pause of 1 s this long: "
                             "isolated, broker login suspended"] = 3.0
    flood_after_refused: Annotated[int, ge(1), "or refused this many times without such a "
                                   "pause, however quickly"] = 1000
    flood_cooldown_s: Annotated[float, ge(0), "a flooder is reinstated after this long "
                                "(0: only by fedmq device reinstate)"] = 3600.0
    audit_interval_s: Annotated[float, gt(0), "refusals are written to the audit log as one "
                                "row per sender and lane this often"] = 10.0
    max_senders: Annotated[int, ge(1), "senders whose buckets are kept (the least recently "
                           "heard are forgotten beyond this)"] = 100_000
