"""Central DP noise: server-side Gaussian noise for trusted-server DP (pure numpy, injectable
randomness), and the scale that secure-bucket members' noise must reach in distributed DP."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from schemas.tensors import Params

from .errors import PrivacyError

__all__ = ["add_server_noise", "bucket_noise_std", "server_noise_std"]


def server_noise_std(
    *,
    clip_norm: float,
    noise_multiplier: float,
    n_participants: int,
    max_weight_share: float | None = None,
) -> float:
    """Standard deviation of the noise for a mean of ``n_participants`` deltas clipped to
    ``clip_norm``: ``z * C / n``, i.e. ``z`` times the most one contribution can move the mean.

    A weighted mean lets one contribution move it by ``C * w_i / sum(w)``: pass the largest
    weight share as ``max_weight_share`` and the std becomes ``z * C * max_weight_share``.
    (A median or trimmed mean has no such simple sensitivity: use the plain mean with DP.)
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise PrivacyError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyError(f"noise_multiplier must be a finite number >= 0, "
                           f"got {noise_multiplier!r}")
    if isinstance(n_participants, bool) or not isinstance(n_participants, int) \
            or n_participants < 1:
        raise PrivacyError(f"n_participants must be an integer >= 1, got {n_participants!r}")
    share = 1.0 / n_participants
    if max_weight_share is not None:
        # no share can be below the uniform one: the largest of n shares is >= 1/n
        if not (share * (1 - 1e-9) <= max_weight_share <= 1.0):
            raise PrivacyError(f"max_weight_share must be in [1/n, 1] = [{share:g}, 1], "
                               f"got {max_weight_share!r}")
        share = max_weight_share
    return noise_multiplier * clip_norm * share


def add_server_noise(
    mean_delta: Mapping[str, np.ndarray],
    *,
    clip_norm: float,
    noise_multiplier: float,
    n_participants: int,
    rng: np.random.Generator,
    max_weight_share: float | None = None,
) -> Params:
    """``mean_delta`` plus i.i.d. Gaussian noise of std :func:`server_noise_std` on every
    coordinate; fresh arrays of the input dtypes (the input is untouched)."""
    std = server_noise_std(clip_norm=clip_norm, noise_multiplier=noise_multiplier,
                           n_participants=n_participants, max_weight_share=max_weight_share)
    out: Params = {}
    for name, arr in mean_delta.items():
        values = np.asarray(arr)
        if std == 0.0:
            out[name] = values.copy()
            continue
        noise = rng.normal(0.0, std, size=values.shape)
        out[name] = (values.astype(np.float64) + noise).astype(values.dtype)
    return out


def bucket_noise_std(*, clip_norm: float, weight_cap: float, noise_multiplier: float) -> float:
    """Standard deviation of the central noise a secure bucket's sum must carry in
    ``distributed`` mode: ``z * C * W``. Each member clips its delta to ``clip_norm`` (C) and
    weighs it by at most ``weight_cap`` (W), so one member moves the bucket's weighted sum by at
    most ``C * W``: the same Gaussian mechanism with multiplier ``z`` as ``server`` mode, which
    is how the accountant charges it. The members split this noise between them (Skellam
    shares), the orchestrator adds none. A zero multiplier is allowed: no noise."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise PrivacyError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")
    if not (math.isfinite(weight_cap) and weight_cap > 0):
        raise PrivacyError(f"weight_cap must be a finite number > 0, got {weight_cap!r}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyError(f"noise_multiplier must be a finite number >= 0, "
                           f"got {noise_multiplier!r}")
    return noise_multiplier * clip_norm * weight_cap
