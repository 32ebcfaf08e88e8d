"""What the export scripts share: the reference file's layout, written byte-reproducibly, and
the numpy dense-MLP epoch that the scikit-learn and Keras-style references are made with."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip timestamps so a re-run gives identical bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            zf.writestr(
                zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                buf.getvalue(),
                compress_type=zipfile.ZIP_DEFLATED,
            )


def save_reference(path: Path, *, x: np.ndarray, y: np.ndarray, lr: float, batch_size: int,
                   losses: Sequence[float], logits: np.ndarray, trainable: Sequence[str],
                   init: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> None:
    """The ``<model>_reference.npz`` layout (see README.md)."""
    arrays: dict[str, np.ndarray] = {
        "X": x,
        "y": y,
        "lr": np.array(lr, dtype=np.float32),
        "batch_size": np.array(batch_size, dtype=np.int64),
        "loss_first_batch": np.array(losses[0], dtype=np.float32),
        "losses": np.array(losses, dtype=np.float32),
        "logits_init": logits,
        "trainable": np.array(list(trainable)),
    }
    arrays.update({f"init/{k}": v for k, v in init.items()})
    arrays.update({f"after/{k}": v for k, v in after.items()})
    save_npz(path, arrays)


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w0, b0, w1, b1 = params
    h = np.maximum(x @ w0 + b0, np.float32(0))
    return h, h @ w1 + b1


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def sgd_step(params: list[np.ndarray], x: np.ndarray, y: np.ndarray, lr: np.float32) -> float:
    """One SGD step on mean softmax cross-entropy; updates params in place."""
    _, _, w1, _ = params
    h, z = forward(params, x)
    p = softmax(z)
    loss = float(-np.mean(np.log(p[np.arange(len(y)), y])))
    dz = p.copy()
    dz[np.arange(len(y)), y] -= 1
    dz /= np.float32(len(y))
    dh = (dz @ w1.T) * (h > 0)
    grads = [x.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)]
    for param, grad in zip(params, grads, strict=True):
        param -= lr * grad.astype(np.float32)
    return loss
