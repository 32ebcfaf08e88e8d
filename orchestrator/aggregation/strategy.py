"""The interface of aggregation: value types and the protocols the algorithms implement.

Everything in this package is synchronous, pure numpy and free of I/O: the service owns the
event loop, the store and every await, and runs these calls in a worker thread.

A :class:`Strategy` turns buffered updates into one aggregate delta. The algorithms
(:class:`~.fedbuff.FedBuff`, :class:`~.fedavg.FedAvg`) weigh and average; everything else
composes around one as a wrapper holding a strategy (:mod:`.wrappers`: clipping, robust
reducers, the server optimizer's step; server-side DP noise in
:mod:`orchestrator.privacy.server_noise`), the pattern of Flower's
``DifferentialPrivacyServerSideFixedClipping``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from schemas.tensors import Params

__all__ = [
    "AggregateResult",
    "BufferedUpdate",
    "Params",
    "ReducerName",
    "ServerOptimizer",
    "StalenessFn",
    "Strategy",
    "UpdateLike",
]

ReducerName = Literal["mean", "median", "trimmed_mean"]


class StalenessFn(Protocol):
    """Maps staleness ``t - tau`` (versions behind) to a weight factor in (0, 1]."""

    def __call__(self, staleness: int) -> float: ...


class UpdateLike(Protocol):
    """What an aggregator reads from an accepted update; the store's buffered rows conform."""

    @property
    def update_id(self) -> int: ...

    @property
    def sender(self) -> str: ...

    @property
    def base_version(self) -> int: ...

    @property
    def num_samples(self) -> int: ...

    @property
    def delta(self) -> Mapping[str, np.ndarray]: ...


@dataclass(frozen=True)
class BufferedUpdate:
    """One accepted update waiting in the aggregation buffer (``delta`` = local - base)."""

    update_id: int
    sender: str
    base_version: int
    num_samples: int
    delta: Params = field(repr=False, compare=False)
    contributors: tuple[str, ...] = ()
    """The devices whose data it carries when that is not only ``sender`` (a secure
    bucket's sum: its surviving members)."""

    @property
    def devices(self) -> tuple[str, ...]:
        return self.contributors or (self.sender,)


class ServerOptimizer(Protocol):
    """Applies an aggregated pseudo-gradient (``-delta``) to the global parameters.

    ``step`` returns new arrays and advances the optimizer's own moments; ``state_dict`` and
    ``load_state_dict`` move those moments through the store, in the same transaction as the
    version they produced.
    """

    def step(self, params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Params:
        ...

    def state_dict(self) -> bytes: ...

    def load_state_dict(self, state: bytes) -> None: ...


@dataclass(frozen=True)
class AggregateResult:
    """The outcome of one aggregation. Failures are data: unusable updates land in ``dropped``.

    ``delta`` is the aggregate (None when no update was usable: no new version to commit);
    ``params`` the next global parameters once a :class:`~.wrappers.ServerStep` applied the
    server optimizer to it (None before). ``weights`` are the nominal weights
    ``n_i * s(t - tau_i)`` of the used updates (the ledger records them); the robust reducers
    ignore them, see :mod:`.reducers`.
    """

    delta: Params | None
    delta_norm: float
    used_ids: tuple[int, ...]
    params: Params | None = None
    weights: Mapping[int, float] = field(default_factory=dict)
    staleness: Mapping[int, int] = field(default_factory=dict)
    update_norms: Mapping[int, float] = field(default_factory=dict)
    """Global L2 norm of each used update's delta before clipping."""
    clip_scales: Mapping[int, float] = field(default_factory=dict)
    """Factor each used delta was scaled by to fit ``clip_norm`` (1.0 = untouched)."""
    dropped: Mapping[int, str] = field(default_factory=dict)
    """Update id -> machine-readable reason (a :class:`schemas.Reason` value)."""

    @property
    def has_update(self) -> bool:
        return self.delta is not None


class Strategy(Protocol):
    """Aggregates ``updates`` for the version after ``version`` (the current one): which
    updates count, with what weight, and the aggregate delta. Must not modify its inputs."""

    def aggregate(
        self,
        global_params: Mapping[str, np.ndarray],
        version: int,
        updates: Sequence[UpdateLike],
    ) -> AggregateResult: ...
