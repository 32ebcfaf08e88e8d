"""One SGD step of ``examples/models/conv1d_vibration.onnx`` written in numpy (the reference
``fedmq bench agent --model conv1d`` times ONNX Runtime against).

The model: input [N, 3, 128] (``X`` [N, 384], channel-major), Conv1d(3, 16, k7, s2, p3) →
BatchNorm1d (inference mode: running statistics frozen, scale and bias trained) → ReLU →
MaxPool1d(2) → Conv1d(16, 32, k5, p2) → ReLU → global average pool → Linear(32, 4), mean
softmax cross-entropy, plain SGD with the FedProx term. Activations are kept channels-last
([N, L, C]) so that every convolution is one im2col (``sliding_window_view``) and one matmul,
forward and backward; no loop runs over samples (the col2im loops over the 5 kernel taps).
Only numpy is imported: this runs in the bench's device-like child process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PARAM_NAMES = (
    "conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias",
    "conv2.weight", "conv2.bias", "fc.weight", "fc.bias",
)
"""The order :func:`numpy_step` takes and returns the parameters in (the export's names)."""

CHANNELS, WINDOW = 3, 128
_K1, _S1, _P1 = 7, 2, 3
_K2, _P2 = 5, 2


@dataclass(frozen=True)
class FrozenBatchNorm:
    """The BatchNorm's frozen running statistics as the step uses them: the mean and
    ``1 / sqrt(var + epsilon)`` (constants of the model, as ONNX Runtime folds them)."""

    mean: np.ndarray
    inv_std: np.ndarray

    @classmethod
    def from_stats(cls, mean: np.ndarray, var: np.ndarray, epsilon: float) -> FrozenBatchNorm:
        inv_std = 1.0 / np.sqrt(var.astype(np.float64) + epsilon)
        return cls(np.asarray(mean, np.float32), inv_std.astype(np.float32))


def _column_sums(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=0)`` as a BLAS product: numpy's reduction down the rows of a narrow array
    ([2048, 16] here) runs ~15x slower than this matmul with a vector of ones."""
    sums: np.ndarray = np.ones(a.shape[0], dtype=a.dtype) @ a
    return sums


def numpy_step(
    params: list[np.ndarray],
    anchor: list[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    lr: float,
    mu: float,
    bn: FrozenBatchNorm,
) -> tuple[list[np.ndarray], float]:
    """One SGD step on the batch ``x`` [N, 384], ``y`` [N]; params in :data:`PARAM_NAMES`
    order, ``mu`` the FedProx coefficient towards ``anchor``."""
    w1, b1, gamma, beta, w2, b2, wf, bf = params
    n = x.shape[0]
    s = bn.inv_std

    # conv1: [N, 128, 3] padded → windows [N, 64, 3, 7] → [N*64, 21] @ [21, 16]
    xp = np.zeros((n, WINDOW + 2 * _P1, CHANNELS), dtype=x.dtype)
    xp[:, _P1 : _P1 + WINDOW] = x.reshape(n, CHANNELS, WINDOW).transpose(0, 2, 1)
    cols1 = sliding_window_view(xp, _K1, axis=1)[:, ::_S1].reshape(-1, CHANNELS * _K1)
    w1m = w1.reshape(w1.shape[0], -1)
    z1 = cols1 @ w1m.T + b1  # [N*64, 16]
    # batch norm (inference) and ReLU
    xhat = (z1 - bn.mean) * s
    a1 = xhat * gamma + beta
    r1 = np.maximum(a1, 0.0)
    # max pool 2 over [N, 32, 2, 16], written into conv2's zero-padded input [N, 36, 16]
    l2 = z1.shape[0] // n // 2
    pairs = r1.reshape(n, l2, 2, -1)
    pp = np.zeros((n, l2 + 2 * _P2, pairs.shape[3]), dtype=r1.dtype)
    np.maximum(pairs[:, :, 0], pairs[:, :, 1], out=pp[:, _P2 : _P2 + l2])
    # conv2: windows [N, 32, 16, 5] → [N*32, 80] @ [80, 32]
    cols2 = sliding_window_view(pp, _K2, axis=1).reshape(n * l2, -1)
    w2m = w2.reshape(w2.shape[0], -1)
    z2 = cols2 @ w2m.T + b2
    r2 = np.maximum(z2, 0.0)  # [N*32, 32]
    g = r2.reshape(n, l2, -1).mean(axis=1)  # [N, 32]
    logits = g @ wf.T + bf  # [N, 4]

    # mean softmax cross-entropy; d is dloss/dlogits scaled by lr (as the MLP reference)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    total = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = float(np.log(total[:, 0]).mean() - logits[rows, y].mean())
    d = e / total
    d[rows, y] -= 1.0
    d *= lr / n

    d_wf = d.T @ g
    d_bf = d.sum(axis=0)
    dg = d @ wf  # [N, 32]
    dz2 = np.where(r2.reshape(n, l2, -1) > 0, (dg / l2)[:, None, :], 0.0).reshape(n * l2, -1)
    d_w2 = (dz2.T @ cols2).reshape(w2.shape)
    d_b2 = _column_sums(dz2)
    # col2im with the weight in (tap, channel) order, so each tap's slice is contiguous rows
    w2kc = w2.transpose(0, 2, 1).reshape(w2.shape[0], -1)
    dcols2 = (dz2 @ w2kc).reshape(n, l2, _K2, -1)  # [N, 32, 5, 16]
    dpp = np.zeros_like(pp)
    for k in range(_K2):  # each kernel tap adds into its shifted window
        dpp[:, k : k + l2] += dcols2[:, :, k]
    dp1 = dpp[:, _P2 : _P2 + l2]
    # through the max pool (the first of a pair wins ties) and the ReLU in one mask
    first = pairs[:, :, 0] >= pairs[:, :, 1]
    gate = np.stack((first, ~first), axis=2) & (pairs > 0)
    da1 = (gate * dp1[:, :, None]).reshape(a1.shape)
    d_gamma = _column_sums(da1 * xhat)
    d_beta = _column_sums(da1)
    dz1 = da1 * (gamma * s)
    d_w1 = (dz1.T @ cols1).reshape(w1.shape)
    d_b1 = _column_sums(dz1)

    grads = [d_w1, d_b1, d_gamma, d_beta, d_w2, d_b2, d_wf, d_bf]
    step = lr * mu
    new = [p - gr - step * (p - a) for p, gr, a in zip(params, grads, anchor, strict=True)]
    return new, loss
