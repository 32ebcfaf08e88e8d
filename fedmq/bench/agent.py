"""Device-side training cost of a model on the agent (``fedmq bench agent``).

``--model mlp`` (default): an MLP on the digits data (1797 samples, 64 features, 10 classes,
standardized), 64 → hidden (256, 256) ReLU → 10 softmax: 85,002 parameters. ``--model
conv1d``: the 1-D CNN exported from PyTorch, ``examples/models/conv1d_vibration.onnx``
(needs a checkout), compiled as ``fedmq model import`` does, on one machine's synthetic
vibration windows (:func:`fedmq.datasets.vibration.make_vibration`, 3 x 128). Training runs
in a child process that imports only what a device has (edge_agent, numpy, onnxruntime), so
its peak RSS is a device's footprint. The child times ``OrtModel.train`` per step and the
identical SGD step written in numpy, with BLAS and ONNX Runtime both pinned to the same
thread count. Where PyTorch is installed, a second child times the same step in PyTorch CPU
(``ort_vs_torch``; null without it). Targets: peak RSS <= 120 MB, and ONNX Runtime no slower
than numpy (``ort_vs_numpy <= 1``).
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

import fedmq
from fedmq.bench import BenchError
from fedmq.bench._numpy_conv1d import FrozenBatchNorm
from fedmq.datasets.vibration import make_vibration
from orchestrator.convergence.datasets import load_named, write_shards
from orchestrator.models import ModelSpec, build_model

RSS_TARGET_MB = 120.0
RATIO_TARGET = 1.0
_CHILD = "fedmq.bench._agent_child"
_TORCH_CHILD = "fedmq.bench._torch_child"
MODELS = ("mlp", "conv1d")
CONV1D_MODEL = Path("examples") / "models" / "conv1d_vibration.onnx"
"""The conv1d model, relative to the checkout that holds the ``fedmq`` package."""
CONV1D_SAMPLES = 1024  # one machine's windows
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
    parser.add_argument("--model", choices=MODELS, default="mlp",
                        help="mlp (built-in, default) or conv1d (examples/models, a checkout)")
    parser.add_argument("--steps", type=_positive, default=400, help="timed steps (400)")
    parser.add_argument("--warmup", type=_positive, default=50, help="untimed steps (50)")
    parser.add_argument("--batch-size", type=_positive, default=32, help="batch size (32)")
    parser.add_argument("--threads", type=_positive, default=1,
                        help="ONNX Runtime intra-op and BLAS threads (1)")
    parser.add_argument("--hidden", type=_hidden, default=(256, 256),
                        help="hidden widths of --model mlp, comma-separated (256,256)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (0.05)")
    parser.add_argument("--seed", type=int, default=0, help="model and shuffle seed (0)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds before the child is killed (600)")
    parser.add_argument("--torch-python", metavar="PATH", default=sys.executable,
                        help="interpreter with PyTorch for ort_vs_torch (this one)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-agent-") as tmp:
        directory = Path(tmp)
        if args.model == "conv1d":
            described = _write_conv1d(directory, args)
        else:
            described = _write_mlp(directory, args)
        child = _run_child(directory, args)
        torch = _run_torch(directory, args)
    ratio = child["train_step_us"] / child["numpy_step_us"]
    torch_us = torch.get("torch_step_us")
    return {
        "bench": "agent",
        **described,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "steps": args.steps,
        "rss_mb": child["rss_mb"],
        "rss_after_import_mb": child["rss_after_import_mb"],
        "train_step_us": child["train_step_us"],
        "numpy_step_us": child["numpy_step_us"],
        "ort_vs_numpy": round(ratio, 3),
        "max_param_diff": child["max_param_diff"],
        "torch_step_us": torch_us,
        "ort_vs_torch": None if torch_us is None else round(child["train_step_us"] / torch_us, 3),
        "torch_max_param_diff": torch.get("max_param_diff"),
        "onnxruntime": child["onnxruntime"],
        "numpy": child["numpy"],
        "torch": torch.get("torch"),
        "targets": {"rss_mb": RSS_TARGET_MB, "ort_vs_numpy": RATIO_TARGET},
        "targets_met": {
            "rss_mb": child["rss_mb"] <= RSS_TARGET_MB,
            "ort_vs_numpy": ratio <= RATIO_TARGET,
        },
    }


def _write_mlp(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    data = load_named("digits")
    assert data.y is not None
    spec = ModelSpec("mlp", data.X.shape[1], data.n_classes, tuple(args.hidden), "relu",
                     seed=args.seed)
    built = build_model(spec)
    _write(directory, built.graphs, dict(built.params), data.X, data.y)
    return {
        "model": f"mlp {spec.n_features}-{'-'.join(map(str, spec.hidden))}-{spec.n_classes} relu",
        "data": f"digits {data.X.shape[0]}x{data.X.shape[1]}",
        "params": built.param_count,
    }


def _write_conv1d(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    # the importer needs onnx, which the device-like child must not import: compile here
    from fedmq.examples import compile_example

    exported, imported = compile_example(CONV1D_MODEL, needed_by="--model conv1d",
                                         error=BenchError)
    bn = frozen_batchnorm(exported)
    np.savez(directory / "frozen.npz", mean=bn.mean, inv_std=bn.inv_std)
    ((X, y),) = make_vibration(1, CONV1D_SAMPLES, seed=args.seed)
    _write(directory, imported.graphs, dict(imported.params), X, y)
    return {
        "model": f"conv1d {CONV1D_MODEL.name} (Conv-BN-ReLU-MaxPool-Conv-ReLU-GAP-Linear)",
        "data": f"vibration {X.shape[0]}x{X.shape[1]} (3x128)",
        "params": sum(int(p.size) for p in imported.params.values()),
    }


def frozen_batchnorm(exported: bytes) -> FrozenBatchNorm:
    """The conv1d model's BatchNorm constants (running statistics and epsilon), which the
    compiled graphs fold in but the numpy reference needs."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(exported).graph
    (node,) = (n for n in graph.node if n.op_type == "BatchNormalization")
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return FrozenBatchNorm.from_stats(values[node.input[3]], values[node.input[4]], epsilon)


def _write(directory: Path, graphs: dict[str, bytes], params: dict[str, Any], X: np.ndarray,
           y: np.ndarray) -> None:
    for name in ("train_step", "eval"):
        (directory / f"{name}.onnx").write_bytes(graphs[name])
    np.savez(directory / "params.npz", **params)
    (shard,) = write_shards(X, y, [np.arange(len(X))], directory)
    shard.rename(directory / "data.npz")


def _run_child(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    report = _run(sys.executable, _CHILD, directory, args, "benchmark child")
    if report.get("foreign_modules"):
        raise BenchError(
            f"the child imported non-device modules {report['foreign_modules']}; "
            "its RSS would not be a device's"
        )
    return report


def _run_torch(directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same step in PyTorch CPU, in a process of its own (torch would swamp the RSS);
    ``{"torch": None}`` when the interpreter has no torch."""
    return _run(args.torch_python, _TORCH_CHILD, directory, args, "PyTorch child")


def _run(python: str, module: str, directory: Path, args: argparse.Namespace,
         what: str) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(dict.fromkeys(_THREAD_VARS, str(args.threads)))
    # glibc otherwise hands the heap top back after each numpy step and faults it in again,
    # which nearly doubled numpy's step time here; the pad gives numpy its best case (ONNX
    # Runtime allocates from its own arena and is unaffected)
    env.setdefault("MALLOC_TOP_PAD_", str(16 * 2**20))
    # the children import fedmq from this checkout, whichever interpreter runs them
    root = str(Path(fedmq.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    command = [
        python, "-m", module, str(directory), "--model", args.model,
        "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--batch-size", str(args.batch_size), "--threads", str(args.threads),
        "--lr", repr(args.lr), "--seed", str(args.seed),
    ]
    try:
        proc = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the {what} did not finish within {args.timeout:g}s") from exc
    except OSError as exc:
        raise BenchError(f"cannot start the {what} with {python}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise BenchError(f"the {what} failed (exit {proc.returncode}):\n{tail}")
    lines = proc.stdout.strip().splitlines()
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise BenchError(f"the {what} printed no JSON report: {proc.stdout!r}") from exc
    return report
