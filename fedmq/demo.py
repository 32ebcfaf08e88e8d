"""``fedmq demo``: from nothing to a trained, exported model in a few minutes.

Starts Mosquitto (embedded), the orchestrator, and a simulated fleet of real agents on
scikit-learn's ``load_digits`` split non-IID (``--task digits-cnn``: with a 2-D CNN imported
from ONNX; ``--task vibration``: on synthetic machine vibration with a 1-D CNN imported from
ONNX; see :mod:`fedmq.demo_tasks`), shows live
progress, stops on the stopping rule, then writes the report and the exported ONNX model.

    fedmq demo [--task digits|digits-cnn|vibration] [--devices 20] [--out demo-out] [--dp]
               [--secure] [--json]

``--dp`` turns on client-level differential privacy (noise multiplier 1.0, clip norm 1.0,
noise added by the orchestrator to each aggregate) and prints the federation's epsilon.
``--secure`` trains in secure buckets (the orchestrator sees only each bucket's sum); with
``--dp`` the buckets' members add the noise instead of the orchestrator.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge_agent.config import AgentConfig
from fedmq.demo_tasks import TASKS, AnomalyFigures, AnomalyTest, DemoTask, score_anomalies
from fedmq.errors import ToolError
from fedmq.simulate import DeviceSim, Fleet, FleetData, FleetSpec, provision_fleet
from orchestrator.broker import pick_free_port
from orchestrator.config import Config, ConfigError, load_config
from orchestrator.models.architecture import unpack_architecture
from orchestrator.privacy import FederationAccountant
from orchestrator.report import write_report
from orchestrator.service import Orchestrator
from orchestrator.store import Store
from orchestrator.store.state_keys import StateKey
from orchestrator.versions.export import export_version
from schemas.annex import annex_from_record

_MARKER = ".fedmq-demo"

CONFIG_TEMPLATE = """\
# written by `fedmq demo`; edit and run it yourself with
#   fedmq orchestrator run --config {config_path}
[federation]
id = "demo"
data_dir = "orchestrator"
heartbeat_s = 5.0

[broker]
embedded = true
port = {port}

[model]
{model}
[training]
epochs = {epochs}
batch_size = {batch_size}
lr = {lr}
seal = true
deadline_s = 60.0
min_battery_pct = 15.0

[aggregation]
mode = "async"
k = {k}
staleness = "polynomial"
max_staleness = 20
server_optimizer = "sgd"
server_lr = {server_lr}

[selection]
concurrency = {concurrency}
retry_after_s = 2.0

[ingest]
synchronous = "NORMAL"

[evaluation]
dataset = "{validation}"
{evaluation}
[stopping]
{stopping}{extra}{privacy}"""

STOPPING = """\
target_metric = {target}
patience = {patience}
min_delta = 0.002
max_versions = {max_versions}
max_wall_s = {max_wall_s}
"""

SECURE_SECTION = """
[secure_aggregation]
enabled = true
bucket_size = {bucket}
form_timeout_s = 20.0
key_timeout_s = 10.0
deadline_s = 30.0
unmask_timeout_s = 30.0
"""

DP_SECTION = """
[privacy]
mode = "{mode}"
clip_norm = 1.0
noise_multiplier = {noise}
target_delta = 1e-5
accountant = "rdp"
"""


@dataclass(frozen=True, slots=True)
class DemoResult:
    final_accuracy: float | None
    versions: int
    updates_accepted: int
    updates_rejected: int
    stop_reason: str
    report_dir: str
    model_path: str
    elapsed_s: float
    epsilon: float | None = None
    """The federation's DP epsilon (at delta 1e-5) when ``--dp`` was on."""
    anomaly: AnomalyFigures | None = None
    """The ``anomaly`` task: what the final model flags at the agreed threshold."""
    device_updates: int = 0
    """Devices' updates in the accepted ones (a secure bucket's sum carries its members')."""

    def to_dict(self) -> dict[str, Any]:
        return {
            **(dataclasses.asdict(self.anomaly) if self.anomaly is not None else {}),
            "epsilon": self.epsilon,
            "final_accuracy": self.final_accuracy, "versions": self.versions,
            "updates_accepted": self.updates_accepted, "device_updates": self.device_updates,
            "updates_rejected": self.updates_rejected, "stop_reason": self.stop_reason,
            "report_dir": self.report_dir, "model_path": self.model_path,
            "elapsed_s": round(self.elapsed_s, 1),
        }


def _prepare(out: Path) -> None:
    """A fresh output folder; refuse to wipe one that a demo did not make."""
    if out.exists() and any(out.iterdir()):
        if not (out / _MARKER).exists():
            raise SystemExit(f"fedmq demo: {out} exists and was not made by fedmq demo; "
                             "choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("made by fedmq demo\n")


@dataclass(frozen=True, slots=True)
class DemoSetup:
    out: Path
    config: Config
    spec: FleetSpec
    data: FleetData
    task: DemoTask
    description: str
    """The data, in words, for the demo's first line."""
    anomaly_test: AnomalyTest | None = None


def prepare_demo(out: Path, *, task: str = "digits", devices: int = 20, k: int = 10,
                 target: float | None = None, max_wall_s: float | None = None, seed: int = 0,
                 dp: bool = False, secure: bool = False, local_dp: bool = False,
                 noise: float = 1.0, max_versions: int | None = None) -> DemoSetup:
    """Files first (blocking, before the event loop runs): a fresh folder, the data shards,
    the held-out validation set, the task's model files and the orchestrator config.
    ``target`` and ``max_wall_s`` default to the task's. ``secure``: devices train in secure
    buckets of ``k`` (each bucket's sum makes one version, so a version still averages ``k``
    devices' updates); with ``dp`` the members add the noise (``distributed``), each weighted
    equally so the bucket sum's sensitivity is one clip norm. ``local_dp``: each device noises
    its own delta (``local``) instead of the orchestrator (``server``)."""
    chosen = TASKS.get(task)
    if chosen is None:
        raise ToolError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    out = out.resolve()
    _prepare(out)
    spec = FleetSpec(devices=devices, dataset=task, split="dirichlet", alpha=0.5,
                     seed=seed, battery_fraction=0.5, time_scale=60.0)
    prepared = chosen.prepare(out, spec)
    data = prepared.data
    if data.test.y is None:  # unlabeled (the anomaly task)
        np.savez(out / "validation.npz", X=data.test.X)
    else:
        np.savez(out / "validation.npz", X=data.test.X, y=data.test.y)
    config_path = out / "orchestrator.toml"
    training = chosen.training
    wall = chosen.max_wall_s if max_wall_s is None else max_wall_s
    stopping = (chosen.stopping or STOPPING).format(
        target=chosen.target if target is None else target, max_wall_s=wall,
        patience=30 if dp or local_dp else 15,
        max_versions=chosen.max_versions if max_versions is None else max_versions)
    concurrency = max(k + k // 2, 2)
    extra = chosen.extra_config.format(min_devices=max(1, devices // 2))
    if secure:  # buckets overlap: up to two in flight, each a version
        concurrency = min(max(devices, k), 2 * k)
        extra += SECURE_SECTION.format(bucket=k)
        if dp:
            extra += "weight_cap = 1.0\nweight_unit = 1.0\n"
    mode = "distributed" if secure else "local" if local_dp else "server"
    config_path.write_text(CONFIG_TEMPLATE.format(
        config_path=config_path, port=pick_free_port(), model=prepared.model_section,
        epochs=training.epochs, batch_size=training.batch_size, lr=training.lr,
        k=1 if secure else k, concurrency=concurrency, validation=out / "validation.npz",
        # with DP every version adds noise: smaller server steps average more of it away
        server_lr=0.5 if dp or local_dp else 1.0, stopping=stopping, evaluation=chosen.evaluation,
        extra=extra,
        privacy=DP_SECTION.format(mode=mode, noise=noise) if dp or local_dp else ""))
    return DemoSetup(out=out, config=load_config(config_path), spec=spec, data=data,
                     task=chosen, description=prepared.description,
                     anomaly_test=prepared.anomaly_test)


async def run_demo(setup: DemoSetup, *, progress: TextIO = sys.stdout,
                   sims: Sequence[DeviceSim] | None = None,
                   agent_config: AgentConfig | None = None,
                   alongside: Callable[[Fleet], Coroutine[Any, Any, None]] | None = None,
                   ) -> DemoResult:
    """Run the prepared demo to its stop. ``sims`` replaces the fleet's drawn device
    behaviour, and ``alongside(fleet)`` runs while it trains (tests script faults with them)."""
    started = time.monotonic()
    out, config, spec, data = setup.out, setup.config, setup.spec, setup.data
    bundles = await provision_fleet(config, spec.device_ids())
    print(f"fedmq demo: task {setup.task.name}, {spec.devices} devices on "
          f"{setup.description}; output in {out}", file=progress)

    async with Orchestrator(config) as orch:
        agent_config = agent_config or AgentConfig(heartbeat_s=2.0, holdout=setup.task.holdout)
        async with Fleet(bundles, data.shards, out / "agents", spec,
                         agent_config=agent_config, sims=sims) as fleet:
            side = asyncio.create_task(alongside(fleet)) if alongside is not None else None
            try:
                await _watch(orch, fleet, progress, setup.task.metric_name)
            finally:
                if side is not None:
                    side.cancel()
                    await asyncio.gather(side, return_exceptions=True)
        stop_reason = orch.stopped_reason or "interrupted"
        counters = dict(orch.counters)

    store_path = config.federation.store_path
    report = await write_report(store_path, out / "report", federation=config.federation.id)
    model_path = out / "model.onnx"
    async with Store.open(store_path) as store:
        latest = await store.latest_version()
        if latest is None:
            raise RuntimeError("no model version was made")
        version = await store.get_version(latest.version)
        accuracy = version.info.metrics.get("server_metric")
        epsilon = await _epsilon(store)
        await export_version(store, latest.version, model_path)
        anomaly = None
        if setup.anomaly_test is not None:
            annex = annex_from_record(version.info.metrics.get("annex", {}))
            graphs = unpack_architecture(await store.get_architecture(latest.arch_hash)).graphs
            anomaly = await asyncio.to_thread(score_anomalies, graphs, version.params, annex,
                                              setup.anomaly_test)
        accepted = sum(n for (status, _), n in (await store.ledger_counts()).items()
                       if status in ("buffered", "applied"))
        rejected = sum(n for (status, _), n in (await store.ledger_counts()).items()
                       if status in ("rejected", "quarantined"))
        kept = [*await store.ledger(status="buffered"), *await store.ledger(status="applied")]
        device_updates = sum(len(row.meta.get("members") or [None]) for row in kept)
    del counters, report  # the demo reports from the store, the single source of truth
    return DemoResult(
        final_accuracy=(float(accuracy) if isinstance(accuracy, int | float)
                        and setup.task.metric_name == "accuracy" else None),
        versions=latest.version, updates_accepted=accepted, updates_rejected=rejected,
        stop_reason=stop_reason, report_dir=str(out / "report"), model_path=str(model_path),
        elapsed_s=time.monotonic() - started,
        epsilon=epsilon, anomaly=anomaly, device_updates=device_updates,
    )


async def _epsilon(store: Store) -> float | None:
    """The federation's epsilon from the accountant the orchestrator saved (None: no DP)."""
    state = await store.get_server_state(StateKey.ACCOUNTANT)
    if state is None:
        return None
    return await asyncio.to_thread(lambda: FederationAccountant.from_state(state).epsilon())


async def _watch(orch: Orchestrator, fleet: Fleet, progress: TextIO,
                 metric_name: str = "accuracy") -> None:
    """Print a progress line per new version (and a heartbeat line now and then) until the
    orchestrator stops the federation."""
    stopped = asyncio.create_task(orch.wait_stopped())
    last_version, last_print = -1, 0.0
    last_accepted, last_t = 0, time.monotonic()
    try:
        while not stopped.done():
            await asyncio.wait({stopped}, timeout=0.5)
            now = time.monotonic()
            version = orch.version
            if version == last_version and now - last_print < 10:
                continue
            accepted = orch.counters.get("accepted", 0)
            rate = (accepted - last_accepted) / max(now - last_t, 1e-6)
            last_accepted, last_t = accepted, now
            metric = await _latest_metric(orch)
            acc = f"{metric:.3f}" if isinstance(metric, float) else "  -  "
            print(f"  version {version:3d}  {metric_name} {acc}  ingest {rate:6.1f} updates/s  "
                  f"devices online {fleet.online():2d}/{len(fleet.agents)}  "
                  f"buffer {orch.buffered}", file=progress, flush=True)
            last_version, last_print = version, now
    finally:
        stopped.cancel()


async def _latest_metric(orch: Orchestrator) -> float | None:
    """The newest evaluated version's server-side metric."""
    for info in reversed((await orch.store.list_versions())[-3:]):
        value = info.metrics.get("server_metric")
        if isinstance(value, int | float):
            return float(value)
    return None


def _anomaly_line(figures: AnomalyFigures | None) -> str:
    if figures is None:
        return ""
    if figures.threshold is None or figures.detection_rate is None:
        return "anomaly threshold: none agreed (too few devices evaluated)\n"
    assert figures.false_positive_rate is not None
    return (f"anomaly threshold {figures.threshold:.4g} (agreed on v{figures.threshold_version}): "
            f"flags {figures.detection_rate:.1%} of injected faults, "
            f"{figures.false_positive_rate:.1%} of healthy windows\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedmq demo", description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="digits",
                        help="what to train (default digits)")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    parser.add_argument("--target", type=float, help="stop when held-out accuracy reaches "
                        "this (default: the task's, " + ", ".join(
                            f"{t.name} {t.target:g}" for t in TASKS.values()) + ")")
    parser.add_argument("--max-wall-s", type=float, help="wall-clock guard (default: the "
                        "task's, " + ", ".join(
                            f"{t.name} {t.max_wall_s:g}" for t in TASKS.values()) + ")")
    parser.add_argument("--dp", action="store_true",
                        help="differential privacy: noise multiplier 1.0, clip norm 1.0")
    parser.add_argument("--local-dp", action="store_true",
                        help="differential privacy with the noise added on each device")
    parser.add_argument("--noise", type=float, default=1.0,
                        help="the DP noise multiplier (default 1.0)")
    parser.add_argument("--secure", action="store_true",
                        help="secure aggregation: devices train in secure buckets (with --dp, "
                        "the members add the noise)")
    parser.add_argument("--json", action="store_true",
                        help="progress on stderr; the last stdout line is one JSON object")
    args = parser.parse_args(argv)
    if args.devices <= 0:
        parser.error("--devices must be > 0")
    progress = sys.stderr if args.json else sys.stdout
    try:
        # with DP, the more updates per version the less noise each one carries
        setup = prepare_demo(Path(args.out), task=args.task, devices=args.devices,
                             target=args.target,
                             max_wall_s=args.max_wall_s, dp=args.dp, secure=args.secure,
                             local_dp=args.local_dp, noise=args.noise,
                             k=args.devices if args.dp or args.local_dp
                             else min(10, args.devices))
        result = asyncio.run(run_demo(setup, progress=progress))
    except (ConfigError, ToolError, OSError) as exc:
        print(f"fedmq demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedmq demo: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        acc = "n/a" if result.final_accuracy is None else f"{result.final_accuracy:.3f}"
        privacy = ("" if result.epsilon is None else
                   f"privacy: epsilon {result.epsilon:.2f} at delta 1e-5 "
                   f"(fedmq privacy report --config {setup.out / 'orchestrator.toml'})\n")
        print(f"\n{_anomaly_line(result.anomaly)}final accuracy {acc} after "
              f"{result.versions} versions "
              f"({result.stop_reason}); updates accepted {result.updates_accepted} "
              f"({result.device_updates} devices' updates), "
              f"rejected {result.updates_rejected}; {result.elapsed_s:.0f} s\n{privacy}"
              f"report: {result.report_dir}/summary.md\nmodel:  {result.model_path}")
    return 0
