"""The ledger check of rotation tests: every update an agent built is counted exactly once."""

from __future__ import annotations

import asyncio

from edge_agent.agent import Agent
from orchestrator.service import Orchestrator
from orchestrator.store import LedgerEntry


async def no_update_lost_or_counted_twice(orch: Orchestrator, agent: Agent,
                                          built_before: int = 0) -> None:
    """Every update the stopped agent built is in the ledger exactly once (by seq), or still
    in its outbox waiting to be sent (an outbox entry the ledger has too was accepted and its
    ack is on its way: a resend would be a duplicate). ``built_before``: what earlier runs on
    the same state file built (their entries may still be in the outbox)."""
    pending = {e.seq for e in await agent.outbox.pending()}
    built = built_before + agent.stats.updates_built
    ledger: list[LedgerEntry] = []
    try:
        async with asyncio.timeout(20):
            while True:  # polled: the last batches may still be committing
                ledger = await orch.store.ledger(sender=agent.device_id)
                if len({r.seq for r in ledger if r.seq is not None} | pending) == built:
                    break
                await asyncio.sleep(0.05)
    except TimeoutError:
        rows = [(r.seq, r.status, r.reason) for r in ledger]
        raise AssertionError(f"{agent.device_id}: {built} built, outbox {sorted(pending)}, "
                             f"ledger {rows}") from None
    # a batch in flight under the old key when the key switched is refused whole (a row
    # without seq) and sent again re-signed from the outbox
    assert all(r.reason == "bad_signature" for r in ledger if r.seq is None), ledger
    rows = [r for r in ledger if r.seq is not None]
    assert len(rows) == len({r.seq for r in rows}), "a seq was counted twice"
    assert all(r.status in ("buffered", "applied") for r in rows), [
        (r.status, r.reason) for r in rows]
