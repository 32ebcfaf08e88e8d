"""Child process of ``fedmq bench agent``: train as a device would, and time it.

Run as ``python -m fedmq.bench._agent_child DIR --model mlp|conv1d ...`` where DIR holds
``train_step.onnx``, ``eval.onnx``, ``params.npz`` and ``data.npz`` (and for ``conv1d``
``frozen.npz``, the BatchNorm's running statistics). It imports only what a device has
(edge_agent, numpy, onnxruntime), so its peak RSS is what a device would need. It times
``OrtModel.train`` step by step and the identical SGD step written in numpy
(:mod:`fedmq.bench._numpy_mlp` or :mod:`fedmq.bench._numpy_conv1d`), and prints one JSON
object.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.data import load_local_data
from edge_agent.trainer import OrtModel
from fedmq.bench import _numpy_conv1d, _numpy_mlp
from fedmq.bench._child_args import child_parser

# what a device does not have; their presence would make the RSS figure meaningless
_FOREIGN = ("onnx", "orchestrator", "sklearn", "scipy", "torch")
_MU = 0.01  # a non-zero proximal coefficient, so the FedProx update is exercised too

# (params, anchor, x, y, lr, mu) -> (new params, loss), params in the model's order
Step = Callable[
    [list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray, float, float],
    tuple[list[np.ndarray], float],
]


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
    numpy_step: Step, params: list[np.ndarray], X: np.ndarray, y: np.ndarray,
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
    model: OrtModel, numpy_step: Step, names: list[str], params: dict[str, np.ndarray],
    X: np.ndarray, y: np.ndarray, lr: float,
) -> float:
    """Largest parameter difference after one step on the same batch (ORT vs numpy)."""
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
    parser = child_parser("python -m fedmq.bench._agent_child")
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
    numpy_step: Step = _numpy_mlp.numpy_step
    if args.model == "conv1d":
        with np.load(directory / "frozen.npz") as frozen:
            bn = _numpy_conv1d.FrozenBatchNorm(frozen["mean"], frozen["inv_std"])
        numpy_step = partial(_numpy_conv1d.numpy_step, bn=bn)
        if set(names) != set(_numpy_conv1d.PARAM_NAMES):
            raise SystemExit(f"conv1d: the graph's parameters are {names}, the numpy "
                             f"reference's {list(_numpy_conv1d.PARAM_NAMES)}")
        names = list(_numpy_conv1d.PARAM_NAMES)
    as_list = [np.ascontiguousarray(params[n], dtype=np.float32) for n in names]

    # warm both paths up (allocator arenas, BLAS buffers, caches), then measure
    _time_ort(model, params, X, y, args.warmup, args.batch_size, args.lr, args.seed)
    _time_numpy(numpy_step, as_list, X, y, args.warmup, args.batch_size, args.lr, args.seed)
    ort_us = _time_ort(model, params, X, y, args.steps, args.batch_size, args.lr, args.seed)
    numpy_us = _time_numpy(numpy_step, as_list, X, y, args.steps, args.batch_size, args.lr,
                           args.seed)
    difference = _max_difference(model, numpy_step, names, params, X[: args.batch_size],
                                 y[: args.batch_size], args.lr)
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
