"""Device-side training cost of a ~100k-parameter MLP (``fedmq bench agent``).

The model is an MLP on the digits data (1797 samples, 64 features, 10 classes, standardized),
64 → hidden (256, 256) ReLU → 10 softmax by default: 85,002 parameters. Training runs in a child
process that imports only what a device has (edge_agent, numpy, onnxruntime), so its peak RSS
is a device's footprint. The child times ``OrtModel.train`` per step and the identical SGD step
written in numpy, with BLAS and ONNX Runtime both pinned to the same thread count.
Targets: peak RSS <= 120 MB, and ONNX Runtime no slower than numpy (``ort_vs_numpy <= 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.bench import BenchError
from orchestrator.convergence.datasets import load_named, write_shards
from orchestrator.models import ModelSpec, build_model

RSS_TARGET_MB = 120.0
RATIO_TARGET = 1.0
_CHILD = "fedmq.bench._agent_child"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return sizes


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=_positive, default=400, help="timed steps (400)")
    parser.add_argument("--warmup", type=_positive, default=50, help="untimed steps (50)")
    parser.add_argument("--batch-size", type=_positive, default=32, help="batch size (32)")
    parser.add_argument("--threads", type=_positive, default=1,
                        help="ONNX Runtime intra-op and BLAS threads (1)")
    parser.add_argument("--hidden", type=_hidden, default=(256, 256),
                        help="hidden widths, comma-separated (256,256)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (0.05)")
    parser.add_argument("--seed", type=int, default=0, help="model and shuffle seed (0)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds before the child is killed (600)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = load_named("digits")
    assert data.y is not None
    spec = ModelSpec("mlp", data.X.shape[1], data.n_classes, tuple(args.hidden), "relu",
                     seed=args.seed)
    built = build_model(spec)
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-agent-") as tmp:
        directory = Path(tmp)
        for name in ("train_step", "eval"):
            (directory / f"{name}.onnx").write_bytes(built.graphs[name])
        params: dict[str, Any] = dict(built.params)
        np.savez(directory / "params.npz", **params)
        (shard,) = write_shards(data.X, data.y, [np.arange(len(data.X))], directory)
        shard.rename(directory / "data.npz")
        child = _run_child(directory, args)
    ratio = child["train_step_us"] / child["numpy_step_us"]
    return {
        "bench": "agent",
        "model": f"mlp {spec.n_features}-{'-'.join(map(str, spec.hidden))}-{spec.n_classes} relu",
        "data": f"digits {data.X.shape[0]}x{data.X.shape[1]}",
        "params": built.param_count,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "steps": args.steps,
        "rss_mb": child["rss_mb"],
        "rss_after_import_mb": child["rss_after_import_mb"],
        "train_step_us": child["train_step_us"],
        "numpy_step_us": child["numpy_step_us"],
        "ort_vs_numpy": round(ratio, 3),
        "max_param_diff": child["max_param_diff"],
        "onnxruntime": child["onnxruntime"],
        "numpy": child["numpy"],
        "targets": {"rss_mb": RSS_TARGET_MB, "ort_vs_numpy": RATIO_TARGET},
        "targets_met": {
            "rss_mb": child["rss_mb"] <= RSS_TARGET_MB,
            "ort_vs_numpy": ratio <= RATIO_TARGET,
        },
    }


def _run_child(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(dict.fromkeys(_THREAD_VARS, str(args.threads)))
    # glibc otherwise hands the heap top back after each numpy step and faults it in again,
    # which nearly doubled numpy's step time here; the pad gives numpy its best case (ONNX
    # Runtime allocates from its own arena and is unaffected)
    env.setdefault("MALLOC_TOP_PAD_", str(16 * 2**20))
    command = [
        sys.executable, "-m", _CHILD, str(directory),
        "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--batch-size", str(args.batch_size), "--threads", str(args.threads),
        "--lr", repr(args.lr), "--seed", str(args.seed),
    ]
    try:
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the benchmark child did not finish within {args.timeout:g}s") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise BenchError(f"the benchmark child failed (exit {proc.returncode}):\n{tail}")
    lines = proc.stdout.strip().splitlines()
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise BenchError(f"the benchmark child printed no JSON report: {proc.stdout!r}") from exc
    if report.get("foreign_modules"):
        raise BenchError(
            f"the child imported non-device modules {report['foreign_modules']}; "
            "its RSS would not be a device's"
        )
    return report
