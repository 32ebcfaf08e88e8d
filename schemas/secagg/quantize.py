"""From a float delta to Z_{2^b} and back: clip, weight, stochastically round, wrap.

A member's coordinate, after clipping the delta to L2 norm ``clip_norm`` (so every coordinate
is within ``±clip_norm``), scaling by its weight ``w ≤ weight_cap`` and by ``scale`` integers
per unit, is within ``±value_bound·weight_cap`` with ``value_bound = clip_norm·scale``; it
rounds to an integer of magnitude at most ``ceil(value_bound·weight_cap)``, and noise adds at
most ``noise_bound``. The sum of ``n`` members is then within ``±n·m`` with
``m = ceil(value_bound·weight_cap) + noise_bound``, and decodes without wrapping from
``b = bits_needed(...)`` bits, the least ``b`` with ``n·m ≤ 2^(b−1) − 1``
(32 members of int8 range ±127 with weights capped at 8: 32·1016 = 32512 ≤ 32767, so 16 bits).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from nacl.utils import random

from .errors import Problem, SecAggError
from .keystream import MAX_BITS, SEED_BYTES, expand_uniform

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
RingArray = npt.NDArray[np.uint32]
_ROUNDING_DOMAIN = b"fedmq/secagg/stochastic-rounding"


def member_bound(value_bound: float, weight_cap: float, noise_bound: int = 0) -> int:
    """The largest magnitude one member's quantised (and noised) coordinate can take."""
    if not (math.isfinite(value_bound) and value_bound >= 0):
        raise SecAggError(Problem.BAD_PARAMETER, f"value bound {value_bound} is not ≥ 0")
    if not (math.isfinite(weight_cap) and weight_cap > 0):
        raise SecAggError(Problem.BAD_PARAMETER, f"weight cap {weight_cap} is not > 0")
    if noise_bound < 0:
        raise SecAggError(Problem.BAD_PARAMETER, f"noise bound {noise_bound} < 0")
    return math.ceil(value_bound * weight_cap) + noise_bound


def bits_needed(n_members: int, value_bound: float, weight_cap: float,
                noise_bound: int = 0) -> int:
    """The least width ``b`` such that the sum of ``n_members`` inputs cannot wrap mod 2^b."""
    if n_members < 1:
        raise SecAggError(Problem.BAD_PARAMETER, f"{n_members} members")
    largest = n_members * member_bound(value_bound, weight_cap, noise_bound)
    bits = max(1, largest.bit_length() + 1)  # 2^(b-1) > largest
    if bits > MAX_BITS:
        raise SecAggError(Problem.BAD_PARAMETER,
                          f"a sum up to ±{largest} needs {bits} bits, more than {MAX_BITS}")
    return bits


def clip_l2(delta: npt.ArrayLike, clip_norm: float) -> FloatArray:
    """``delta`` scaled down (never up) to L2 norm at most ``clip_norm``."""
    values = np.asarray(delta, dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        raise SecAggError(Problem.BAD_PARAMETER, "the delta is not finite")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise SecAggError(Problem.BAD_PARAMETER, f"clip norm {clip_norm} is not > 0")
    norm = float(np.linalg.norm(values))
    return values * (clip_norm / norm) if norm > clip_norm else values


def stochastic_round(values: npt.ArrayLike, seed: bytes | None = None) -> IntArray:
    """Each value rounded down or up with the probabilities that keep it unbiased, the
    coin flips from the keystream of ``seed`` (fresh from libsodium when None)."""
    exact: FloatArray = np.asarray(values, dtype=np.float64)
    seed = random(SEED_BYTES) if seed is None else seed
    floor = np.floor(exact)
    coins = expand_uniform(seed, _ROUNDING_DOMAIN, exact.size).reshape(exact.shape)
    return (floor + (coins < exact - floor)).astype(np.int64)


def to_ring(values: IntArray, bits: int) -> RingArray:
    """Signed integers as residues mod 2^bits (uint32)."""
    _check_bits(bits)
    return (values.astype(np.int64) & ((1 << bits) - 1)).astype(np.uint32)


def from_ring(values: RingArray, bits: int) -> IntArray:
    """Residues mod 2^bits as the signed integers in ``[−2^(b−1), 2^(b−1))``."""
    _check_bits(bits)
    wide = values.astype(np.int64) & ((1 << bits) - 1)
    return np.where(wide >= 1 << (bits - 1), wide - (1 << bits), wide)


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise SecAggError(Problem.BAD_PARAMETER, f"bit width {bits} not in 1..{MAX_BITS}")


def quantize(delta: npt.ArrayLike, *, clip_norm: float, scale: float, weight: float = 1.0,
             weight_cap: float = 1.0, seed: bytes | None = None) -> IntArray:
    """``delta`` clipped to ``clip_norm``, times ``min(weight, weight_cap)`` and ``scale``,
    stochastically rounded: a member's integer input before noise and masking."""
    if not (math.isfinite(scale) and scale > 0):
        raise SecAggError(Problem.BAD_PARAMETER, f"scale {scale} is not > 0")
    if not (math.isfinite(weight) and 0 <= weight):
        raise SecAggError(Problem.BAD_PARAMETER, f"weight {weight} is not ≥ 0")
    member_bound(clip_norm * scale, weight_cap)
    factor = min(weight, weight_cap) * scale
    return stochastic_round(clip_l2(delta, clip_norm) * factor, seed)


def dequantize(total: RingArray, bits: int, scale: float) -> FloatArray:
    """The modular sum of members' inputs as floats: the weighted sum of their clipped deltas
    (divide by the summed weights for the mean)."""
    if not (math.isfinite(scale) and scale > 0):
        raise SecAggError(Problem.BAD_PARAMETER, f"scale {scale} is not > 0")
    return from_ring(total, bits).astype(np.float64) / scale
