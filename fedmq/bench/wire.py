"""Bytes on the wire per update: fedmq's codec vs the float32 format Flower sends.

Two runs of the same simulated fleet (20 devices, digits split non-IID with Dirichlet
alpha=0.5, same seed, same number of model versions): one with fedmq's codec, one with plain
float32 deltas. fedmq's figure is the ``updates`` payloads exactly as the orchestrator received
them from the broker (sealed, signed, zstd envelope and batch framing) divided by the updates
they carried. Flower's figure is the ``Parameters`` message that Flower's own serializer
(``flwr.common.ndarrays_to_parameters``, then its protobuf) makes of the same model in float32;
it leaves out the rest of Flower's ``FitRes`` and gRPC framing, so the reduction is if anything
understated. Targets: reduction >= 8 with accuracy within 1 point of the float32 run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.bench import BenchError
from fedmq.bench._fleetrun import RunResult, RunSettings, run_federation

REDUCTION_TARGET = 8.0
ACCURACY_GAP_TARGET = 0.01

# fedmq's default codec ([training] codec = "topk", topk_fraction = 0.05 in orchestrator/config.py)
DEFAULT_CODEC = "topk"
DEFAULT_TOPK_FRACTION = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=20, help="simulated devices (20)")
    parser.add_argument("--versions", type=int, default=40,
                        help="model versions each run makes (40)")
    parser.add_argument("--codec", default=DEFAULT_CODEC,
                        choices=("int8", "topk", "float16", "float32"),
                        help=f"fedmq codec ({DEFAULT_CODEC})")
    parser.add_argument("--topk-fraction", type=float, default=DEFAULT_TOPK_FRACTION,
                        help=f"top-k: share of each tensor sent ({DEFAULT_TOPK_FRACTION})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-wall-s", type=float, default=150.0,
                        help="cap on each run (150)")
    parser.add_argument("--quick", action="store_true",
                        help="a small smoke run (6 devices, 4 versions)")


def flower_bytes(params: dict[str, np.ndarray]) -> int:
    """Bytes of the ``Parameters`` protobuf Flower builds for these arrays in float32."""
    with warnings.catch_warnings():
        # flwr pulls in click, whose deprecation warnings are not ours
        warnings.simplefilter("ignore")
        try:
            from flwr.common import ndarrays_to_parameters
            from flwr.common.serde import parameters_to_proto
        except ModuleNotFoundError as exc:
            raise BenchError("the wire benchmark needs Flower: "
                             "pip install -e '.[bench]' (flwr>=1.10)") from exc
    arrays = [np.asarray(v, dtype=np.float32) for v in params.values()]
    return len(parameters_to_proto(ndarrays_to_parameters(arrays)).SerializeToString())


def run(args: argparse.Namespace) -> dict[str, Any]:
    devices, versions = (6, 4) if args.quick else (args.devices, args.versions)
    if devices < 1 or versions < 1:
        raise BenchError("--devices and --versions must be >= 1")
    base = RunSettings(devices=devices, seed=args.seed, k=min(10, devices),
                       concurrency=max(2, min(15, devices)), max_versions=versions,
                       max_wall_s=args.max_wall_s)
    ours = replace(base, codec=args.codec, topk_fraction=args.topk_fraction)
    plain = replace(base, codec="float32")
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-wire-") as tmp:
        fed = asyncio.run(run_federation(ours, Path(tmp) / "fedmq"))
        f32 = asyncio.run(run_federation(plain, Path(tmp) / "float32"))
    for name, res in (("fedmq", fed), ("float32", f32)):
        if res.update_entries == 0:
            raise BenchError(f"the {name} run published no updates ({res.stop_reason})")
    ours_bytes = fed.update_payload_bytes / fed.update_entries
    flower = flower_bytes(f32.final_params)
    reduction = flower / ours_bytes
    acc_fed, acc_f32 = _acc(fed), _acc(f32)
    gap = acc_f32 - acc_fed
    return {
        "bench": "wire",
        "codec": args.codec + (f" {args.topk_fraction:g}" if args.codec == "topk" else ""),
        "devices": devices,
        "versions": [fed.versions, f32.versions],
        "params": int(sum(v.size for v in f32.final_params.values())),
        "fedmq_bytes_per_update": round(ours_bytes, 1),
        "fedmq_envelope_bytes_per_update": round(fed.update_entry_bytes / fed.update_entries, 1),
        "float32_fedmq_bytes_per_update": round(f32.update_payload_bytes / f32.update_entries, 1),
        "flower_bytes_per_update": flower,
        "reduction": round(reduction, 2),
        "fedmq_accuracy": round(acc_fed, 4),
        "float32_accuracy": round(acc_f32, 4),
        "updates": [fed.update_entries, f32.update_entries],
        "targets": {"reduction": REDUCTION_TARGET, "accuracy_gap": ACCURACY_GAP_TARGET},
        "targets_met": {"reduction": reduction >= REDUCTION_TARGET,
                        "accuracy_gap": gap <= ACCURACY_GAP_TARGET},
    }


def _acc(result: RunResult) -> float:
    final = result.final_accuracy
    if final is None:  # run_federation raises first; this keeps the type exact
        raise BenchError("no evaluated version")
    return final
