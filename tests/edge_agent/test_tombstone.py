"""The tombstone of a revoked device: written once, read by every later start, which refuses.

Only a verified ``Control(revoke)`` writes one; a forged one is refused like any forgery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nacl.signing import SigningKey

from edge_agent import cli as agent_cli
from edge_agent.agent import Agent
from edge_agent.data import LocalData
from edge_agent.errors import RevokedError
from edge_agent.state import LocalState
from edge_agent.tombstone import Tombstone, tombstone_path
from orchestrator.models import BuiltModel
from schemas import Bundle, Control, ControlAction, DownKind, Reason
from tests.support.fake_orchestrator import FakeOrchestrator

WHEN_MS = 1796544902000  # 2026-12-06T08:15:02Z


def _bundle(device_id: str = "dev-t") -> Bundle:
    return Bundle(device_id=device_id, fed="fed", broker_host="127.0.0.1", broker_port=1,
                  mqtt_username=device_id, mqtt_password="pw",
                  orchestrator_key=bytes(SigningKey.generate().verify_key).hex(),
                  enroll_secret="00" * 32)


def test_the_line_says_who_when_and_why(tmp_path: Path) -> None:
    stone = Tombstone("dev-7", "fed", WHEN_MS, "stolen")
    path = tombstone_path(tmp_path / "dev-7.agent.db", "dev-7")
    assert path == tmp_path / "dev-7.revoked"
    stone.write(path)
    assert Tombstone.read(path, "dev-7") == stone
    assert stone.line == ("device dev-7 was revoked by the orchestrator at "
                          "2026-12-06T08:15:02Z: stolen")
    assert path.stat().st_mode & 0o077 == 0
    assert not path.with_name(path.name + ".tmp").exists()
    assert Tombstone.read(tmp_path / "other.revoked", "other") is None


def test_an_unreadable_tombstone_still_refuses(tmp_path: Path) -> None:
    path = tmp_path / "dev-7.revoked"
    path.write_bytes(b"\xff not json")
    stone = Tombstone.read(path, "dev-7")
    assert stone is not None and stone.device_id == "dev-7"
    assert "unreadable" in stone.line and str(stone.error()) == stone.line


async def test_destroyed_state_has_no_key_and_never_makes_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with LocalState(path, device_id="d", fed="f") as state:
        seed = bytes(state.signing_key)
        await state.destroy_secrets("device d was revoked")
    assert seed not in path.read_bytes()
    with pytest.raises(RevokedError, match="device d was revoked"):
        async with LocalState(path, device_id="d", fed="f"):
            pass


async def test_an_agent_with_a_tombstone_refuses_to_start(tmp_path: Path) -> None:
    bundle = _bundle()
    state = tmp_path / "dev-t.agent.db"
    Tombstone("dev-t", "fed", WHEN_MS, "lost").write(tombstone_path(state, "dev-t"))
    data = LocalData(np.zeros((4, 8), np.float32), np.zeros(4, np.int64))
    with pytest.raises(RevokedError, match=r"^device dev-t was revoked .*: lost$"):
        async with Agent(bundle, data, state):
            pass
    assert not state.exists()  # refused before the state file was even opened


def test_the_cli_refuses_with_exit_status_1_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    bundle_file = tmp_path / "dev-t.bundle.json"
    bundle_file.write_text(_bundle().to_json())
    data_file = tmp_path / "data.npz"
    np.savez(data_file, X=np.zeros((4, 8), np.float32), y=np.zeros(4, np.int64))
    Tombstone("dev-t", "fed", WHEN_MS, "lost").write(tmp_path / "dev-t.revoked")
    code = agent_cli.main(["run", "--bundle", str(bundle_file), "--data", str(data_file)])
    err = capsys.readouterr().err
    assert code == 1
    assert err == ("fedmq agent: device dev-t was revoked by the orchestrator at "
                   "2026-12-06T08:15:02Z: lost\n")


async def test_a_forged_revoke_is_refused_and_leaves_no_tombstone(
    orchestrator: FakeOrchestrator, built_model: BuiltModel, shard: LocalData, tmp_path: Path,
    make_agent: Callable[..., Agent], agent_config: Any, ready: Callable[..., Any],
) -> None:
    orch = orchestrator
    bundle = await orch.add_device("dev-f")
    await orch.publish_model(built_model)
    config = dataclasses.replace(agent_config, exit_on_revoke=True)
    async with make_agent(bundle, shard, tmp_path / "agent.db", config) as agent:
        await ready(agent, orch)
        await orch.send("dev-f", DownKind.CONTROL, Control(ControlAction.REVOKE, "forged"),
                        key=SigningKey.generate())
        await agent.wait_until(lambda a: a.stats.refused[Reason.BAD_SIGNATURE.value] == 1, 10)
        assert agent.tombstone() is None and agent.activity.revoked is None
        assert agent.finished is None
        # the genuine order: tombstone, then the agent ends and its key is gone
        await orch.control("dev-f", ControlAction.REVOKE, reason="lost")
        assert await agent.run_until() == "revoked"
        stone = agent.tombstone()
        assert stone is not None and stone.reason == "lost"
    with pytest.raises(RevokedError):
        async with make_agent(bundle, shard, tmp_path / "agent.db", config):
            pass
