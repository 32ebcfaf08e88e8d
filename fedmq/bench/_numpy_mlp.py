"""One SGD step of the built-in ReLU MLP written in numpy (the reference ``fedmq bench agent``
times ONNX Runtime against): dense ReLU layers, mean softmax cross-entropy, the FedProx term.
Only numpy is imported: this runs in the bench's device-like child process.
"""

from __future__ import annotations

import numpy as np


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
