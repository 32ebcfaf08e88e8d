"""Child process of ``fedmq bench agent``: train as a device would, and time it.

Run as ``python -m fedmq.bench._agent_child DIR ...`` where DIR holds ``train_step.onnx``,
``eval.onnx``, ``params.npz`` and ``data.npz``. It imports only what a device has (edge_agent,
numpy, onnxruntime), so its peak RSS is what a device would need. It times ``OrtModel.train``
step by step and the identical SGD step written in numpy (dense ReLU layers, softmax
cross-entropy, FedProx update), and prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.data import load_local_data
from edge_agent.trainer import OrtModel

# what a device does not have; their presence would make the RSS figure meaningless
_FOREIGN = ("onnx", "orchestrator", "sklearn", "scipy", "torch")
_MU = 0.01  # a non-zero proximal coefficient, so the FedProx update is exercised too


def _peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    On Linux this is ``VmHWM`` of /proc/self/status, the high-water mark of the address space
    made at exec. ``getrusage(RUSAGE_SELF).ru_maxrss`` is not used there: the kernel carries the
    launching process's peak over fork and exec into it, so a child of a 130 MB parent reports
    at least 130 MB whatever it does itself.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes vs KiB


def numpy_step(
    params: list[np.ndarray],
    anchor: list[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    lr: float,
    mu: float,
) -> tuple[list[np.ndarray], float]:
    """One SGD step of a ReLU MLP with softmax cross-entropy; params are ``[W0, b0, ...]``."""
    weights, biases = params[0::2], params[1::2]
    layers = len(weights)
    inputs = [x]
    h = x
    for i in range(layers - 1):
        h = np.maximum(h @ weights[i] + biases[i], 0.0)
        inputs.append(h)
    z = h @ weights[-1] + biases[-1]
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = float(np.log(total[:, 0]).mean() - z[rows, y].mean())
    d = e / total
    d[rows, y] -= 1.0
    d *= lr / len(y)
    grads: list[np.ndarray] = [d] * len(params)
    for i in reversed(range(layers)):
        grads[2 * i] = inputs[i].T @ d
        grads[2 * i + 1] = d.sum(axis=0)
        if i:
            d = (d @ weights[i].T) * (inputs[i] > 0)
    step = lr * mu
    new = [p - g - step * (p - a) for p, g, a in zip(params, grads, anchor, strict=True)]
    return new, loss


def _median_us(stamps: list[int]) -> float:
    return float(np.median(np.diff(np.array(stamps, dtype=np.int64)))) / 1e3


def _time_ort(
    model: OrtModel, params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray,
    steps: int, batch: int, lr: float, seed: int,
) -> float:
    stamps: list[int] = []

    def should_stop() -> bool:  # asked before every step: the gaps are the step times
        stamps.append(time.perf_counter_ns())
        return len(stamps) > steps

    epochs = -(-(steps + 1) * batch // len(X)) + 1
    model.train(
        params, X, y, epochs=epochs, batch_size=batch, lr=lr, mu=_MU,
        rng=np.random.default_rng(seed), should_stop=should_stop,
    )
    return _median_us(stamps)


def _time_numpy(
    params: list[np.ndarray], X: np.ndarray, y: np.ndarray,
    steps: int, batch: int, lr: float, seed: int,
) -> float:
    rng = np.random.default_rng(seed)
    anchor = [p.copy() for p in params]
    stamps = [time.perf_counter_ns()]
    while len(stamps) <= steps:
        order = rng.permutation(len(X))
        for begin in range(0, len(X), batch):
            index = order[begin : begin + batch]
            params, _ = numpy_step(params, anchor, X[index], y[index], lr, _MU)
            stamps.append(time.perf_counter_ns())
            if len(stamps) > steps:
                break
    return _median_us(stamps)


def _max_difference(
    model: OrtModel, params: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray, lr: float
) -> float:
    """Largest parameter difference after one step on the same batch (ORT vs numpy)."""
    names = list(params)
    start = [params[n] for n in names]
    # perturb the anchor so the proximal term contributes on both sides
    anchor = {n: p + 0.1 for n, p in params.items()}
    result = model.train(
        params, X, y, epochs=1, batch_size=len(X), lr=lr, mu=_MU, global_params=anchor,
        rng=np.random.default_rng(0),
    )
    reference, _ = numpy_step(start, [anchor[n] for n in names], X, y, lr, _MU)
    return max(
        float(np.abs(result.params[n] - r).max()) for n, r in zip(names, reference, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedmq.bench._agent_child")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rss_after_import = _peak_rss_mb()

    directory: Path = args.directory
    graphs = {g: (directory / f"{g}.onnx").read_bytes() for g in ("train_step", "eval")}
    with np.load(directory / "params.npz") as archive:
        params = {name: archive[name] for name in archive.files}
    data = load_local_data(directory / "data.npz")
    assert data.y is not None
    X, y = data.X, data.y
    model = OrtModel(graphs, intra_op_threads=args.threads)
    names = list(model.param_names)
    as_list = [np.ascontiguousarray(params[n], dtype=np.float32) for n in names]

    # warm both paths up (allocator arenas, BLAS buffers, caches), then measure
    _time_ort(model, params, X, y, args.warmup, args.batch_size, args.lr, args.seed)
    _time_numpy(as_list, X, y, args.warmup, args.batch_size, args.lr, args.seed)
    ort_us = _time_ort(model, params, X, y, args.steps, args.batch_size, args.lr, args.seed)
    numpy_us = _time_numpy(as_list, X, y, args.steps, args.batch_size, args.lr, args.seed)
    difference = _max_difference(model, params, X[: args.batch_size], y[: args.batch_size],
                                 args.lr)
    report = {
        "rss_mb": round(_peak_rss_mb(), 2),
        "rss_after_import_mb": round(rss_after_import, 2),
        "train_step_us": round(ort_us, 2),
        "numpy_step_us": round(numpy_us, 2),
        "max_param_diff": difference,
        "samples": len(X),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "foreign_modules": sorted(m for m in _FOREIGN if m in sys.modules),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
