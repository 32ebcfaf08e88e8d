"""Seq blocks: reserved durably, one server-state write per block, and resumed above every seq
that may have been used."""

from __future__ import annotations

from orchestrator.link.seqs import SeqCounter
from orchestrator.store.state_keys import StateKey
from tests.support.fakes import MemoryServerState


async def test_seq_blocks_are_durable_before_use() -> None:
    state = MemoryServerState()

    def stored() -> int:
        return int.from_bytes(state.values[StateKey.SEQ_LIMIT], "big")

    first = SeqCounter(state, block=10)
    await first.start()
    used = await first.reserve(3) + [await first.next() for _ in range(12)]
    assert used == list(range(15)) and stored() >= 15
    assert state.writes == 2  # one write per block, not per seq
    # a "crash": the next run resumes above everything that may have been used
    second = SeqCounter(state, block=10)
    await second.start()
    assert await second.next() >= max(used) + 1
