"""PyTorch child of ``fedmq bench agent``: the same SGD step in PyTorch CPU, timed the same way.

Run as ``python -m fedmq.bench._torch_child DIR --model mlp|conv1d ...`` on the directory the
agent child reads. The model is written with ``torch.nn.functional`` on leaf tensors holding
the same starting parameters (MLP: ``h @ W + b`` with ReLU; conv1d: conv1d, batch_norm in
inference mode with the frozen statistics, relu, max_pool1d, conv1d, relu, mean, linear), mean
cross-entropy, autograd, and the update ``p -= lr * (grad + mu * (p - anchor))`` under
``no_grad``, with ``torch.set_num_threads`` at the bench's thread count. Prints one JSON
object: ``{"torch": null}`` when torch cannot be imported.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.bench import _numpy_conv1d, _numpy_mlp
from fedmq.bench._child_args import child_parser

_MU = 0.01  # as the agent child


def _mlp_forward(torch: Any, params: list[Any], x: Any) -> Any:
    weights, biases = params[0::2], params[1::2]
    h = x
    for w, b in zip(weights[:-1], biases[:-1], strict=True):
        h = torch.relu(h @ w + b)
    return h @ weights[-1] + biases[-1]


def _conv1d_forward(torch: Any, mean: Any, var: Any, params: list[Any], x: Any) -> Any:
    functional = torch.nn.functional
    w1, b1, gamma, beta, w2, b2, wf, bf = params
    h = x.reshape(x.shape[0], _numpy_conv1d.CHANNELS, _numpy_conv1d.WINDOW)
    h = functional.conv1d(h, w1, b1, stride=2, padding=3)
    # var is 1 / inv_std**2 with eps 0: the same normalisation as the numpy reference's
    h = functional.batch_norm(h, mean, var, gamma, beta, training=False, eps=0.0)
    h = functional.max_pool1d(torch.relu(h), 2)
    h = torch.relu(functional.conv1d(h, w2, b2, padding=2))
    return functional.linear(h.mean(dim=2), wf, bf)


def main(argv: list[str] | None = None) -> int:
    parser = child_parser("python -m fedmq.bench._torch_child")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print(json.dumps({"torch": None}))
        return 0
    torch.set_num_threads(args.threads)

    directory: Path = args.directory
    with np.load(directory / "params.npz") as archive:
        params = {name: archive[name] for name in archive.files}
    with np.load(directory / "data.npz") as archive:
        X, y = archive["X"].astype(np.float32), archive["y"].astype(np.int64)
    names = list(params)
    forward: Callable[[list[Any], Any], Any] = partial(_mlp_forward, torch)
    reference: Callable[..., tuple[list[np.ndarray], float]] = _numpy_mlp.numpy_step
    if args.model == "conv1d":
        names = list(_numpy_conv1d.PARAM_NAMES)
        with np.load(directory / "frozen.npz") as frozen:
            bn = _numpy_conv1d.FrozenBatchNorm(frozen["mean"], frozen["inv_std"])
        var = torch.from_numpy((1.0 / bn.inv_std.astype(np.float64) ** 2).astype(np.float32))
        forward = partial(_conv1d_forward, torch, torch.from_numpy(bn.mean), var)
        reference = partial(_numpy_conv1d.numpy_step, bn=bn)
    start = [np.ascontiguousarray(params[n], dtype=np.float32) for n in names]
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y)

    def step(p: list[Any], anchor: list[Any], index: Any) -> float:
        loss = torch.nn.functional.cross_entropy(forward(p, X_t[index]), y_t[index])
        grads = torch.autograd.grad(loss, p)
        with torch.no_grad():
            for value, grad, a in zip(p, grads, anchor, strict=True):
                value.sub_(args.lr * (grad + _MU * (value - a)))
        return float(loss)

    def timed(steps: int) -> float:
        p = [torch.tensor(v, requires_grad=True) for v in start]
        anchor = [torch.tensor(v) for v in start]
        rng = np.random.default_rng(args.seed)
        stamps = [time.perf_counter_ns()]
        while len(stamps) <= steps:
            order = torch.from_numpy(rng.permutation(len(X)))
            for begin in range(0, len(X), args.batch_size):
                step(p, anchor, order[begin : begin + args.batch_size])
                stamps.append(time.perf_counter_ns())
                if len(stamps) > steps:
                    break
        return float(np.median(np.diff(np.array(stamps, dtype=np.int64)))) / 1e3

    timed(args.warmup)
    torch_us = timed(args.steps)

    # one step from the same start on the same batch, against the numpy reference
    batch = slice(0, args.batch_size)
    anchor_np = [v + np.float32(0.1) for v in start]
    p = [torch.tensor(v, requires_grad=True) for v in start]
    step(p, [torch.from_numpy(a) for a in anchor_np], torch.arange(len(X))[batch])
    expected, _ = reference(start, anchor_np, X[batch], y[batch], args.lr, _MU)
    difference = max(float(np.abs(t.detach().numpy() - e).max())
                     for t, e in zip(p, expected, strict=True))
    print(json.dumps({"torch": torch.__version__, "torch_step_us": round(torch_us, 2),
                      "max_param_diff": difference}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
