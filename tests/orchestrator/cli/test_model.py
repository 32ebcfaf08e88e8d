"""``fedmq model`` against a real run: real agents on load_digits, a real Mosquitto and the
real orchestrator. ``rollback`` republishes an old version's weights and agents train from
them (checked by parameter digest); ``export`` writes an ONNX model whose predictions, run
with plain onnxruntime, score exactly what the orchestrator's own evaluation of that version
recorded; ``list`` and ``show`` report lineage, contributors and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.config import AgentConfig
from fedmq.simulate import Fleet, FleetSpec, provision_fleet, shard_data
from orchestrator.broker import MosquittoBroker
from orchestrator.cli import model as model_cli
from orchestrator.config import load_config
from orchestrator.service import Orchestrator
from orchestrator.store import Store
from schemas import params_digest
from tests.support.service_config import config_dict

SPEC = FleetSpec(devices=4, dataset="digits", split="iid", seed=0, battery_fraction=0.0,
                 time_scale=1.0)


def _toml(data: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    return "\n".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items())
                     for name, table in data.items())


async def _cli(*argv: str) -> tuple[int, str, str]:
    """Run ``fedmq model ARGV`` in a thread (it runs its own event loop)."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return model_cli.main(list(argv))

    rc = await asyncio.to_thread(run)
    return rc, out.getvalue(), err.getvalue()


async def _until(condition: Callable[[], Any], within: float) -> None:
    """Poll the store (another process's view: there is no event to wait on)."""
    async with asyncio.timeout(within):
        for _ in range(int(within * 10) + 1):
            if await condition():
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s")


async def test_rollback_export_list_and_show(
    broker: MosquittoBroker, tmp_path: Path,
) -> None:
    data = shard_data(SPEC)
    assert data.test.y is not None
    validation = tmp_path / "validation.npz"
    np.savez(validation, X=data.test.X, y=data.test.y)
    sections = config_dict(
        tmp_path, broker,
        model={"kind": "softmax", "n_features": 64, "n_classes": 10, "seed": 0},
        training={"epochs": 1, "batch_size": 16, "lr": 0.1, "deadline_s": 30.0},
        aggregation={"k": 3, "max_staleness": 20},
        selection={"retry_after_s": 0.5},
        ingest={"synchronous": "NORMAL"},
        evaluation={"dataset": str(validation)})
    config_path = tmp_path / "orchestrator.toml"
    config_path.write_text(_toml(sections))
    cfg = str(config_path)
    config = load_config(config_path)
    bundles = await provision_fleet(config, SPEC.device_ids())
    await broker.reload()
    agent_config = AgentConfig(heartbeat_s=0.3, holdout=0.0)
    workdir = tmp_path / "agents"

    async with Orchestrator(config) as orch:
        async with Fleet(bundles, data.shards, workdir, SPEC, agent_config=agent_config):
            async with asyncio.timeout(60):
                await orch.wait_for_version(3)
        store = orch.store
        v1 = await store.get_version(1)

        rc, out, err = await _cli("rollback", "1", "--config", cfg, "--wait", "20", "--json")
        assert rc == 0, err
        made = json.loads(out)
        rolled = made["version"]
        assert made["rollback_of"] == 1 and rolled > 3
        async with asyncio.timeout(10):
            await orch.wait_for_version(rolled, published=True)
        copy = await store.get_version(rolled)
        assert (copy.info.kind, copy.info.parent) == ("rollback", 1)
        assert params_digest(copy.params) == params_digest(v1.params)

        # the agents come back, take the republished weights and train from them
        async with Fleet(bundles, data.shards, workdir, SPEC,
                         agent_config=agent_config) as fleet:
            async def trained_on_rollback() -> bool:
                rows = await store.ledger(status=("buffered", "applied"))
                return any(r.base_version == rolled for r in rows)

            await _until(trained_on_rollback, 30)
            holders = 0
            for agent in fleet.agents:
                held = await agent.local_state.load_model()
                if held is not None and held.version == rolled:
                    holders += 1
                    assert params_digest(held.params) == params_digest(v1.params)
            based = [r for r in await store.ledger(status=("buffered", "applied"))
                     if r.base_version == rolled]
            assert based  # updates whose base is the republished version

        async def evaluated() -> bool:
            metrics = (await store.get_version(rolled)).info.metrics
            return "server_metric" in metrics

        await _until(evaluated, 10)
        rolled_metrics = (await store.get_version(rolled)).info.metrics
        assert rolled_metrics["server_metric"] == v1.info.metrics["server_metric"]

    # export: plain onnxruntime, same accuracy as the orchestrator's evaluation of v1
    onnx_path = tmp_path / "model.onnx"
    rc, out, err = await _cli("export", "1", "-o", str(onnx_path), "--config", cfg)
    assert rc == 0, err
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["X"]
    (scores,) = session.run(None, {"X": data.test.X.astype(np.float32)})[:1]
    predictions = np.argmax(scores, axis=1)
    accuracy = float(np.mean(predictions == data.test.y))
    assert accuracy == pytest.approx(v1.info.metrics["server_metric"], abs=1e-6)

    rc, out, err = await _cli("list", "--config", cfg, "--json")
    assert rc == 0, err
    listed = json.loads(out)
    assert [v["version"] for v in listed] == list(range(len(listed)))
    assert listed[rolled]["kind"] == "rollback"
    rc, out, err = await _cli("show", str(rolled), "--config", cfg, "--json")
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["parent"] == 1 and shown["lineage"]["rollback_of"] == 1
    assert shown["ancestors"] == [1, 0]
    rc, out, err = await _cli("show", "2", "--config", cfg, "--json")
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["contributors"] and shown["updates"] >= 3
    assert "server_metric" in shown["metrics"]
    rc, out, err = await _cli("show", "2", "--config", cfg)
    assert rc == 0 and "contributors:" in out and "lineage: v2 <- v1 <- v0" in out
    rc, out, err = await _cli("list", "--config", cfg)
    assert rc == 0 and "rollback" in out


async def test_mistakes_are_one_line(tmp_path: Path, broker: MosquittoBroker
                                     ) -> None:
    config_path = tmp_path / "orchestrator.toml"
    config_path.write_text(_toml(config_dict(tmp_path, broker)))
    cfg = str(config_path)
    rc, _, err = await _cli("list", "--config", cfg)
    assert rc == 1 and err.count("\n") == 1 and "no orchestrator database" in err
    fed = load_config(config_path).federation
    fed.data_dir.mkdir()
    async with Store.open(fed.store_path):
        pass  # an empty store: no versions yet
    for argv in (("show", "7"), ("rollback", "7"), ("export", "7", "-o", "x.onnx")):
        rc, _, err = await _cli(*argv, "--config", cfg)
        assert rc == 1 and err.count("\n") == 1 and "no version 7" in err, (argv, err)
    rc, _, err = await _cli("show", "-3", "--config", cfg)
    assert rc == 2 and err.count("\n") == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("[aggregation]\nk = 0\n[federation]\nid = 'x'\n")
    rc, _, err = await _cli("list", "--config", str(bad))
    assert rc == 2 and "aggregation.k" in err and err.count("\n") == 1
