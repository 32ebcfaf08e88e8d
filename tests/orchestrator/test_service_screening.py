"""Screening, quarantine and isolation through the running service (real Mosquitto, real
store), and the operator's ``fedmq device reinstate``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator.broker import MosquittoBroker
from orchestrator.cli import device as device_cli
from orchestrator.config import Config, load_config
from orchestrator.service import Orchestrator
from schemas import AckOutcome, Control, ControlAction, Params
from tests.support.service_config import config_file


def _write_config(tmp_path: Path, broker: MosquittoBroker) -> Path:
    return config_file(tmp_path / "robust.toml", broker, aggregation={"k": 5},
                       robustness={"screening": True, "max_flags": 2, "window_s": 600.0})


def _honest(params: Params, seed: int) -> Params:
    """A shared direction plus a little per-device spread, as honest non-IID updates."""
    rng = np.random.default_rng(seed)
    common = np.random.default_rng(99)
    return {k: (common.standard_normal(p.shape) * 0.01
                + rng.standard_normal(p.shape) * 0.002).astype(np.float32)
            for k, p in params.items()}


def _flipped(params: Params) -> Params:
    return {k: (-10 * v).astype(np.float32) for k, v in _honest(params, 1234).items()}


async def _round(orch: Orchestrator, honest: list[Any], bad: Any) -> dict[int, Any]:
    """One version's worth: four honest updates and one sign-flipped, scaled update."""
    target = orch.version + 1
    base = orch.version
    sent = {}
    for i, dev in enumerate(honest):
        seq, update = dev.update(_honest(orch.params, base * 10 + i), base_version=base)
        await dev.send(update)
        sent[dev.id] = (dev, seq)
    seq, update = bad.update(_flipped(orch.params), base_version=base)
    await bad.send(update)
    for dev, s in [*sent.values(), (bad, seq)]:
        assert (await dev.wait_acks([s]))[s].outcome is AckOutcome.ACCEPTED
    async with asyncio.timeout(10):
        await orch.wait_for_version(target)
    return sent


async def test_flagged_updates_are_quarantined_and_a_repeat_offender_isolated(
    tmp_path: Path, broker: MosquittoBroker, devices: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _write_config(tmp_path, broker)
    config: Config = load_config(path)
    async with Orchestrator(config, store_synchronous="NORMAL") as orch:
        async with asyncio.timeout(10):
            await orch.wait_for_version(0, published=True)
        honest = [await devices(orch, f"h{i}") for i in range(4)]
        bad = await devices(orch, "bad")

        await _round(orch, honest, bad)
        first = await orch.store.ledger(sender="bad")
        assert [(r.status, r.reason) for r in first] == [("quarantined", "direction_outlier")]
        assert (await orch.store.get_device("bad")).status == "active"  # type: ignore[union-attr]
        version = await orch.store.get_version(1)
        assert len(version.info.lineage["updates"]) == 4  # the flagged update was not applied

        await _round(orch, honest, bad)
        device = await orch.store.get_device("bad")
        assert device is not None and device.status == "isolated"
        assert device.quarantine_count == 2
        control = await bad.next("control")
        assert isinstance(control, Control) and control.action is ControlAction.ISOLATE
        events = [(e.event, e.reason) for e in await orch.store.list_audit(device="bad",
                                                                           newest_first=False)]
        # the first batch has too little history for the norm check: the batch median's
        # direction catches it; with 8 honest norms on record the norm check fires first
        assert events[-3:] == [("quarantined", "direction_outlier"),
                               ("quarantined", "norm_outlier"),
                               ("isolated", "norm_outlier")]
        assert orch.counters["isolated"] == 1
        assert orch.counters["quarantined.direction_outlier"] == 1
        assert orch.counters["quarantined.norm_outlier"] == 1
        # no honest device was flagged
        assert all(r.status == "applied" for r in await orch.store.ledger()
                   if r.sender != "bad")

        # its later updates are rejected at ingestion, with the reason
        seq, update = bad.update(_honest(orch.params, 7), base_version=orch.version)
        await bad.send(update)
        ack = (await bad.wait_acks([seq]))[seq]
        assert (ack.outcome, ack.reason) == (AckOutcome.REJECTED, "isolated")

        # the operator reinstates it; the running service forgets its flags and tells it
        code = await asyncio.to_thread(device_cli.main, ["reinstate", "bad", "--config",
                                                         str(path), "--reason", "checked"])
        assert code == 0, capsys.readouterr().err
        control = await bad.next("control", within=20)
        assert isinstance(control, Control) and control.action is ControlAction.REINSTATE
        seq, update = bad.update(_honest(orch.params, 8), base_version=orch.version)
        await bad.send(update)
        assert (await bad.wait_acks([seq]))[seq].outcome is AckOutcome.ACCEPTED
        audit = await orch.store.list_audit(device="bad", event="reinstated")
        assert [(e.actor, e.reason) for e in audit] == [("cli", "checked")]

        # its record starts afresh: two new offences isolate it again (the buffer is one
        # update ahead now, so each round's flipped update is judged in the next version)
        flagged = orch.counters["quarantined.norm_outlier"]
        for _ in range(3):
            await _round(orch, honest, bad)
            if orch.counters["isolated"] == 2:
                break
            assert (await orch.store.get_device("bad")).status == "active"  # type: ignore[union-attr]
        assert (await orch.store.get_device("bad")).status == "isolated"  # type: ignore[union-attr]
        assert orch.counters["quarantined.norm_outlier"] - flagged == 2


async def test_reinstating_a_device_that_is_not_isolated_is_one_line(
    tmp_path: Path, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str],
) -> None:
    path = _write_config(tmp_path, broker)
    code = await asyncio.to_thread(device_cli.main, ["reinstate", "nobody", "--config",
                                                     str(path)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == ["fedmq device: error: no device 'nobody'"]
