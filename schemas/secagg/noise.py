"""Distributed discrete noise: each member adds Skellam noise, the sum carries the target.

Skellam(μ) = X − Y with X, Y ~ Poisson(μ/2) independent has mean 0 and variance μ, and
Skellam(μ₁) + Skellam(μ₂) = Skellam(μ₁ + μ₂). A member adds Skellam(σ²/t), so the sum of any
``t`` or more members' inputs carries central variance at least σ² (Agarwal et al. 2021).
Poisson draws invert a CDF table over λ ± (12√λ + 16) with 53-bit uniforms from the keystream
of a fresh libsodium seed; the tail cut off there has mass below 1e-30 for every λ, and it
makes the noise bounded, ``|noise| ≤ noise_bound(...)``, which :func:`~.quantize.bits_needed`
uses. float64 tables make this a close, not an exact, sampler for privacy accounting.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from nacl.utils import random

from .errors import Problem, SecAggError
from .keystream import SEED_BYTES, expand_uniform

IntArray = npt.NDArray[np.int64]
MAX_TABLE = 1 << 20
_DOMAIN_X = b"fedmq/secagg/noise/x"
_DOMAIN_Y = b"fedmq/secagg/noise/y"


def member_variance(central_variance: float, min_members: int) -> float:
    """The variance each member adds so that ``min_members`` of them sum to the target."""
    if not (math.isfinite(central_variance) and central_variance >= 0) or min_members < 1:
        raise SecAggError(Problem.BAD_PARAMETER,
                          f"variance {central_variance} over {min_members} members")
    return central_variance / min_members


def _window(lam: float) -> tuple[int, int]:
    width = 12.0 * math.sqrt(lam) + 16.0
    low, high = max(0, math.floor(lam - width)), math.ceil(lam + width)
    if high - low + 1 > MAX_TABLE:
        raise SecAggError(Problem.BAD_PARAMETER, f"Poisson rate {lam} is too large")
    return low, high


def poisson_table(lam: float) -> tuple[int, npt.NDArray[np.float64]]:
    """``(low, cdf)``: ``cdf[i]`` is P(X ≤ low + i) for X ~ Poisson(lam) truncated."""
    low, high = _window(lam)
    ks = np.arange(low, high + 1, dtype=np.float64)
    log_fact = np.array([math.lgamma(k + 1.0) for k in range(low, high + 1)])
    log_pmf = ks * math.log(lam) - lam - log_fact
    pmf = np.exp(log_pmf - log_pmf.max())
    cdf = np.cumsum(pmf)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return low, cdf


def noise_bound(central_variance: float, min_members: int) -> int:
    """The largest ``|noise|`` one member's :func:`skellam_noise` can add."""
    lam = member_variance(central_variance, min_members) / 2
    if lam == 0:
        return 0
    low, high = _window(lam)
    return high - low


def _poisson(lam: float, seed: bytes, domain: bytes, n: int) -> IntArray:
    low, cdf = poisson_table(lam)
    draws = np.searchsorted(cdf, expand_uniform(seed, domain, n), side="right")
    return draws.astype(np.int64) + low


def skellam_noise(n: int, *, central_variance: float, min_members: int,
                  seed: bytes | None = None) -> IntArray:
    """``n`` draws of one member's share of the noise, from ``seed`` (fresh when None)."""
    lam = member_variance(central_variance, min_members) / 2
    if lam == 0:
        return np.zeros(n, dtype=np.int64)
    seed = random(SEED_BYTES) if seed is None else seed
    return _poisson(lam, seed, _DOMAIN_X, n) - _poisson(lam, seed, _DOMAIN_Y, n)
