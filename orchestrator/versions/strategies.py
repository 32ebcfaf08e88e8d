"""The aggregation the config describes, composed from the strategy and its wrappers.

    ServerStep(ServerNoise(Clipped(RobustReduction(FedBuff | FedAvg)))), optimizer)

from the inside out: the algorithm of ``[aggregation] mode`` weighs the updates; a robust
``reducer`` replaces their mean; ``clip_norm`` clips every update first; ``[privacy] mode =
"server"`` clips to the privacy clip norm, weighs uniformly and noises the aggregate (``local``
and ``distributed`` add no server noise: the devices, or the secure buckets' members, did); the
server optimizer steps last. Each layer is there only when its option is set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from orchestrator.aggregation import (
    Clipped,
    FedAvg,
    FedBuff,
    RobustReduction,
    ServerOptimizer,
    ServerStep,
    StalenessFn,
    Strategy,
    optimizer_from_config,
    staleness_from_config,
)
from orchestrator.config import Config
from orchestrator.privacy.server_noise import ServerNoise

__all__ = ["optimizer_from", "staleness_from", "strategy_from"]


def optimizer_from(config: Config) -> ServerOptimizer:
    agg = config.aggregation
    if agg.server_optimizer == "sgd":
        return optimizer_from_config("sgd", lr=agg.server_lr, momentum=agg.server_momentum)
    return optimizer_from_config(agg.server_optimizer, lr=agg.server_lr, beta1=agg.beta1,
                                 beta2=agg.beta2, tau=agg.tau)


def staleness_from(config: Config) -> StalenessFn:
    agg = config.aggregation
    kwargs: dict[str, Any] = {}
    if agg.staleness in ("polynomial", "hinge") and agg.a is not None:
        kwargs["a"] = agg.a
    if agg.staleness == "hinge" and agg.b is not None:
        kwargs["b"] = agg.b
    fn: StalenessFn = staleness_from_config(agg.staleness, **kwargs)
    return fn


def strategy_from(config: Config, optimizer: ServerOptimizer, *,
                  rng: np.random.Generator | None = None) -> Strategy:
    """``rng``: the server-side DP noise's randomness (default: fresh OS entropy)."""
    agg, privacy = config.aggregation, config.privacy
    strategy: Strategy
    if agg.mode == "sync":
        strategy = FedAvg()
    else:
        strategy = FedBuff(staleness_fn=staleness_from(config), max_staleness=agg.max_staleness)
    if agg.reducer != "mean":
        strategy = RobustReduction(strategy, agg.reducer, trim_fraction=agg.trim_fraction)
    if agg.clip_norm is not None:
        strategy = Clipped(strategy, agg.clip_norm)
    if privacy.mode == "server":
        strategy = ServerNoise(strategy, privacy.clip_norm, privacy.noise_multiplier,
                               rng if rng is not None else np.random.default_rng())
    return ServerStep(strategy, optimizer)
