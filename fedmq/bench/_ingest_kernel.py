"""The in-process floor of ``fedmq bench ingest``: what one core does per update with no
broker, no store and no event loop — verify the signature, unseal, decompress, decode the
message and its int8 tensors, and fold the delta into a running weighted sum."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
from nacl.public import PrivateKey
from nacl.signing import VerifyKey

from schemas.envelope import decode_body, verify
from schemas.limits import Limits
from schemas.messages import Update
from schemas.tensors import decode_params

__all__ = ["kernel_updates_per_s"]


def kernel_updates_per_s(
    samples: Mapping[str, tuple[VerifyKey, Sequence[bytes]]],
    unseal: PrivateKey,
    limits: Limits,
    *,
    min_seconds: float = 1.0,
) -> tuple[float, int]:
    """Updates per second over the sampled entries, repeated for at least ``min_seconds``
    (single thread); returns ``(rate, updates timed)``."""
    work = [(key, entry) for key, entries in samples.values() for entry in entries]
    if not work:
        raise ValueError("no sample entries")
    sums: dict[str, np.ndarray] = {}
    done = 0
    started = time.perf_counter()
    while True:
        for key, entry in work:
            update = decode_body(verify(entry, key, limits), Update, limits, unseal)
            weight = np.float32(update.num_samples)
            for name, value in decode_params(update.tensors, limits).items():
                acc = sums.get(name)
                if acc is None:
                    sums[name] = value * weight
                else:
                    acc += value * weight
            done += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed, done
