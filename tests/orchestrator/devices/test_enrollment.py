"""Small parts of the service: seq blocks, stopping rules, sync rounds, the key file, the
registry's refresh and the enrollment decision."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from orchestrator.config import StoppingConfig
from orchestrator.convergence.stopping import StoppingRules, StoppingState
from orchestrator.convergence.sync_rounds import SyncRounds
from orchestrator.devices.enrollment import judge_enroll
from orchestrator.devices.registry import DeviceView, Registry, bump_generation
from orchestrator.link.keys import KeyFileError, load_key, load_or_create_key
from orchestrator.link.seqs import SeqCounter
from orchestrator.store import Store
from orchestrator.store.state_keys import StateKey
from schemas import Enroll, EnrollStatus, enroll_mac
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


def _rules(**kw: object) -> StoppingRules:
    cfg = StoppingConfig(**{"target_metric": None, "higher_is_better": True, "patience": None,  # type: ignore[arg-type]
                            "min_delta": 0.0, "max_versions": None, "max_wall_s": None, **kw})
    return StoppingRules(cfg, StoppingState(started_ms=0))


def test_stopping_rules() -> None:
    assert _rules(target_metric=0.9).on_version(1, 0.95).startswith("target_metric")
    assert _rules(target_metric=0.9).on_version(1, 0.5) is None
    lower = _rules(target_metric=0.1, higher_is_better=False)
    assert lower.on_version(1, 0.2) is None and lower.on_version(2, 0.05) is not None
    plateau = _rules(patience=2, min_delta=0.01)
    assert [plateau.on_version(v, m) for v, m in ((1, 0.5), (2, 0.505), (3, 0.6), (4, 0.6))] \
        == [None, None, None, None]
    assert plateau.on_version(5, 0.59) is not None
    assert _rules(max_versions=3).on_version(3, None).startswith("max_versions")
    wall = _rules(max_wall_s=2.0)
    assert wall.on_clock(1999) is None and wall.on_clock(2000) is not None
    state = StoppingState(5, 0.7, 3, 2)
    assert StoppingState.from_bytes(state.to_bytes()) == state


def test_sync_rounds() -> None:
    rounds = SyncRounds(quorum=2, concurrency=3, deadline_s=1.0)
    rounds.open(4, now_ms=0)
    for d in "abc":
        assert rounds.may_task(d)
        rounds.assign(d)
    assert not rounds.may_task("d") and not rounds.may_task("a")
    rounds.on_accepted(3)  # another version's update does not count
    rounds.on_accepted(4)
    assert not rounds.due(500) and rounds.due(1000)  # deadline with one update
    rounds.on_accepted(4)
    assert rounds.due(10)
    empty = SyncRounds(quorum=1, concurrency=1, deadline_s=1.0)
    empty.open(0, 0)
    assert not empty.restart_if_empty(999) and empty.restart_if_empty(1000)
    assert empty.current is not None and empty.current.deadline_ms == 2000
    with pytest.raises(ValueError):
        SyncRounds(quorum=3, concurrency=2, deadline_s=1.0)


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "orchestrator.key"
    key = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert bytes(load_or_create_key(path)) == bytes(key)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)
    os.chmod(path, 0o600)
    path.write_text("not hex\n")
    with pytest.raises(KeyFileError, match="32-byte hex seed"):
        load_key(path)


async def test_registry_refreshes_only_when_the_generation_changes(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "a.db") as mine, Store.open(tmp_path / "a.db") as other:
        await mine.add_device("d", secret=b"s" * 32)
        registry = Registry(mine)
        await registry.load()
        assert registry.get("d") is not None and registry.get("d").status == "pending"  # type: ignore[union-attr]
        await other.set_status("d", "revoked")  # another process, no bump: not seen yet
        assert await registry.refresh() == []
        await bump_generation(other)
        ((before, after),) = await registry.refresh()
        assert before is not None and after is not None
        assert (before.status, after.status) == ("pending", "revoked")
        assert await registry.refresh() == []


def test_enrollment_decisions() -> None:
    key = SigningKey.generate()
    public = bytes(key.verify_key)
    secret = b"k" * 32
    good = Enroll("d", public, enroll_mac(secret, fed="f", device_id="d", public_key=public))
    bad = Enroll("d", public, b"\x00" * 32)

    def view(status: str, pk: bytes | None = None) -> DeviceView:
        return DeviceView("d", "device", status, pk, secret, None)

    judge = judge_enroll
    assert judge(None, good, fed="f", manual_approval=False).reason == "unknown_sender"
    first = judge(view("pending"), good, fed="f", manual_approval=False)
    assert first.register and first.status is EnrollStatus.ACTIVE
    held = judge(view("pending"), good, fed="f", manual_approval=True)
    assert held.register == "awaiting_approval"
    assert judge(view("pending"), bad, fed="f", manual_approval=False).reason == "bad_hmac"
    assert judge(view("pending"), good, fed="g", manual_approval=False).reason == "bad_hmac"
    again = judge(view("active", public), bad, fed="f", manual_approval=False)
    assert again.status is EnrollStatus.ACTIVE and again.register is None
    other_key = judge(view("active", b"x" * 32), good, fed="f", manual_approval=False)
    assert other_key.reason == "not_authorized"
    assert judge(view("revoked", public), good, fed="f", manual_approval=False).reason \
        == "revoked"
