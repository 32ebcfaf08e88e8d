"""``fedmq model``: model versions — list, show, roll back, export; and import a model.

    fedmq model list --config FILE [--json]
    fedmq model show V --config FILE [--json]
    fedmq model rollback V --config FILE [--wait SECONDS] [--json]
    fedmq model export V -o model.onnx --config FILE
    fedmq model import model.onnx --loss cross_entropy|bce|mse [--labels N]
                       [--freeze NAME...] [--data FILE] -o DIR

``show`` prints a version's lineage (parent, kind, ancestors), its contributors (the applied
updates, by device) and its metrics. ``rollback`` asks the orchestrator to republish V's
weights as a new version: the request goes into the store, the running service applies it
within about a second (or at its next start) and publishes it, and agents follow; with
``--wait`` the command waits for the new version and prints it. ``export`` writes a plain
ONNX inference model (parameters baked in, input ``X``) that onnxruntime runs with nothing
from fedmq installed. ``import`` compiles an exported ONNX inference graph (torch, tf2onnx,
skl2onnx) into the train_step / eval / infer graphs and params.npz that ``[model]
graphs_dir`` reads (``--data``: a sample of the devices' data is checked against it
first); it needs no config (its mistakes, the model's included, exit 2). Every
mistake is one line on stderr and a non-zero exit status: 2 for bad usage, 1 for failures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge_agent.data import DataError, LocalData, load_local_data
from orchestrator.cli._common import Parser as _Parser
from orchestrator.cli._common import UsageError, cli_actor, one_line_errors
from orchestrator.config import Config, load_config
from orchestrator.models.importer import LOSSES, ModelImportError, compile_model, write_model_dir
from orchestrator.models.importer.fit import check_fit
from orchestrator.store import Store, StoreError, VersionInfo
from orchestrator.versions.export import export_version
from orchestrator.versions.rollback import RollbackError, request_rollback, rollback_result

PROG = "fedmq model"
_WAIT_POLL_S = 0.2
_SUMMARY_METRICS = ("server_metric", "server_loss", "federated_metric", "updates")


def _version_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a version number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a version is >= 0, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="List, show, roll back and export model versions; "
                     "import a model.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="every version with its key metrics")
    show = commands.add_parser("show", help="one version: lineage, contributors, metrics")
    show.add_argument("version", type=_version_arg, metavar="V")
    rollback = commands.add_parser("rollback", help="republish V's weights as a new version")
    rollback.add_argument("version", type=_version_arg, metavar="V")
    rollback.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                          help="wait up to this long for the service to apply it")
    export = commands.add_parser("export", help="write V as a plain ONNX inference model")
    export.add_argument("version", type=_version_arg, metavar="V")
    export.add_argument("-o", "--output", required=True, metavar="FILE")
    imports = commands.add_parser("import", help="compile an exported ONNX model for training")
    imports.add_argument("model", metavar="MODEL.onnx")
    imports.add_argument("--loss", required=True, choices=LOSSES)
    imports.add_argument("--labels", type=int, metavar="N", help="classes (default: the "
                         "model's output width)")
    imports.add_argument("--freeze", nargs="+", action="extend", default=[], metavar="NAME",
                         help="initializers to keep fixed")
    imports.add_argument("-o", "--output", required=True, metavar="DIR")
    imports.add_argument("--data", metavar="FILE", help="a sample of the devices' data (.npz "
                         "or .csv, as agents read it): checked against the model first")
    for sub in (listing, show, rollback, export):
        sub.add_argument("--config", required=True, metavar="FILE", help="orchestrator config")
    for sub in (listing, show, rollback):
        sub.add_argument("--json", action="store_true", help="JSON on stdout")
    return parser


# -- commands ----------------------------------------------------------------------------------


async def _list(store: Store, args: argparse.Namespace) -> int:
    versions = await store.list_versions()
    if args.json:
        print(json.dumps([_info_dict(v) for v in versions]))
        return 0
    print(f"{'version':>7}  {'kind':<9} {'parent':>6}  {'created (UTC)':<19}  metrics")
    for v in versions:
        parent = "-" if v.parent is None else str(v.parent)
        print(f"{v.version:>7}  {v.kind:<9} {parent:>6}  {_when(v.created_ms):<19}  "
              f"{_summary(v.metrics)}")
    return 0


async def _show(store: Store, args: argparse.Namespace) -> int:
    model = await store.get_version(args.version)
    info = model.info
    applied = await store.ledger(applied_version=info.version)
    contributors = Counter(e.sender for e in applied if e.sender is not None)
    samples: Counter[str] = Counter()
    for e in applied:
        if e.sender is not None and e.num_samples is not None:
            samples[e.sender] += e.num_samples
    ancestors = await _ancestors(store, info)
    if args.json:
        print(json.dumps({
            **_info_dict(info), "ancestors": ancestors,
            "contributors": [{"device": d, "updates": n, "samples": samples[d]}
                             for d, n in sorted(contributors.items())],
            "updates": len(applied)}))
        return 0
    parent = "none" if info.parent is None else f"v{info.parent}"
    print(f"version {info.version} ({info.kind}), parent {parent}, created "
          f"{_when(info.created_ms)} UTC")
    print(f"params sha256 {info.params_sha256}, architecture {info.arch_hash[:16]}")
    print("lineage: " + " <- ".join(f"v{v}" for v in [info.version, *ancestors]))
    extra = {k: v for k, v in info.lineage.items() if k not in ("updates", "staleness")}
    if extra:
        print(f"  {json.dumps(extra, sort_keys=True)}")
    print(f"contributors: {len(contributors)} device(s), {len(applied)} update(s)")
    for device, n in sorted(contributors.items()):
        print(f"  {device}: {n} update(s), {samples[device]} samples")
    print("metrics:")
    for key, value in sorted(info.metrics.items()):
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, float):
            value = f"{value:.6g}"
        print(f"  {key}: {value}")
    return 0


async def _rollback(store: Store, args: argparse.Namespace) -> int:
    request = await request_rollback(store, args.version, actor=cli_actor(),
                                     now_ms=int(time.time() * 1000))
    made: int | None = None
    if args.wait > 0:
        deadline = time.monotonic() + args.wait
        while made is None and time.monotonic() < deadline:
            await asyncio.sleep(_WAIT_POLL_S)
            made = await rollback_result(store, request.request_id)
        if made is None:
            raise RollbackError(f"rollback to v{args.version} requested (id "
                                f"{request.request_id}) but not applied within {args.wait:g}s;"
                                " is the orchestrator running?")
    if args.json:
        print(json.dumps({"rollback_of": args.version, "request_id": request.request_id,
                          "version": made}))
    elif made is None:
        print(f"rollback to v{args.version} requested (id {request.request_id}); the "
              "orchestrator applies it within about a second, or when it next starts")
    else:
        print(f"rolled back: v{made} republishes v{args.version}'s weights")
    return 0


async def _export(store: Store, args: argparse.Namespace) -> int:
    out = await export_version(store, args.version, args.output)
    print(f"wrote v{args.version} to {out}")
    return 0


_COMMANDS = {"list": _list, "show": _show, "rollback": _rollback, "export": _export}


# -- helpers -----------------------------------------------------------------------------------


async def _ancestors(store: Store, info: VersionInfo, limit: int = 20) -> list[int]:
    by_version = {v.version: v for v in await store.list_versions()}
    chain: list[int] = []
    parent = info.parent
    while parent is not None and len(chain) < limit:
        chain.append(parent)
        parent = by_version[parent].parent if parent in by_version else None
    return chain


def _info_dict(v: VersionInfo) -> dict[str, Any]:
    return {"version": v.version, "kind": v.kind, "parent": v.parent,
            "created_ms": v.created_ms, "arch_hash": v.arch_hash,
            "params_sha256": v.params_sha256,
            "lineage": {k: x for k, x in v.lineage.items() if k != "staleness"},
            "metrics": v.metrics}


def _summary(metrics: dict[str, Any]) -> str:
    parts = []
    for key in _SUMMARY_METRICS:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key}={value:.4g}")
    return " ".join(parts) or "-"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _run(config: Config, args: argparse.Namespace) -> int:
    path = config.federation.store_path
    # opening creates a missing database: reading commands must not
    if not await asyncio.to_thread(Path(path).is_file):
        raise StoreError(f"no orchestrator database at {path} (has the orchestrator run?)")
    async with Store.open(path, federation_id=config.federation.id) as store:
        return await _COMMANDS[args.command](store, args)


def _import(args: argparse.Namespace) -> int:
    """Every failure here is a mistake in the model or the options: exit 2."""
    try:
        data = Path(args.model).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.model}: {exc.strerror or exc}") from None
    try:
        imported = compile_model(data, loss=args.loss, labels=args.labels, freeze=args.freeze)
        if args.data is not None:
            sample = _sample(args.data, supervised=args.loss != "mse")
            check_fit(imported, sample.X, sample.y, args.data)
        write_model_dir(imported, Path(args.output))
    except ModelImportError as exc:
        raise UsageError(f"{args.model}: {exc}") from None
    values = sum(p.size for p in imported.params.values())
    classes = f", {imported.n_classes} classes" if imported.n_classes else ""
    print(f"wrote {args.output}: {len(imported.params)} parameter tensors ({values} values), "
          f"{imported.n_features} features{classes}")
    return 0


def _sample(path: str, *, supervised: bool) -> LocalData:
    try:
        return load_local_data(path, supervised=supervised)
    except DataError as exc:
        raise UsageError(str(exc)) from None


@one_line_errors(PROG)
def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "import":
        return _import(args)
    config = load_config(args.config)
    return asyncio.run(_run(config, args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
