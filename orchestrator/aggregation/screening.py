"""Anomaly screening of updates against recent history, and isolation of repeat offenders.

Pure, synchronous numpy with no I/O: the service feeds it decoded deltas, quarantines what it
flags, and persists its state (:meth:`AnomalyScreen.state_dict`,
:meth:`IsolationPolicy.state_dict`) in the store's ``server_state``.

Checks, in order:

1. ``non_finite``: a NaN or infinity anywhere.
2. ``norm_outlier``: the robust z-score ``0.6745 * (x - median) / MAD`` of the update's
   global L2 norm, taken as ``x = ln(norm)``, against the recently accepted norms (plus the
   other updates of the batch when screening a batch), is above ``z_threshold``. Logarithms
   because honest norms are right-skewed (they grow with a device's data, hence its local
   steps): on the raw scale the big-data devices of a non-IID fleet were flagged again and
   again, and isolated; in log space a scaling by 10 is a shift of ln 10 = 2.3, far beyond the
   honest spread. One-sided: a small update does little harm (devices with little data, or a
   converged model, send them). The MAD is floored at ``mad_floor`` (log units, so about a
   relative difference) so that norms made all alike by clipping do not turn a 1 % difference
   into an outlier.
3. ``direction_outlier``: the cosine between the update and the reference direction is below
   ``min_cosine``. The reference is an exponential moving average of the unit-normalised
   aggregates (:meth:`AnomalyScreen.observe_aggregate`) once ``min_aggregates`` were seen;
   before that, when screening a batch of three or more, the coordinate-wise median of the
   batch. Honest updates from label-skewed shards can point well away from the aggregate
   (cosines down to about -0.1 were seen), sign-flipped ones point against it (-0.3 to -0.8).

With no history and no batch peers nothing can be judged, so only ``non_finite`` applies.
Screening a whole buffer with :meth:`AnomalyScreen.screen_batch` is therefore the robust way
to start: the first batch is judged against itself.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import numpy as np

from orchestrator.errors import OrchestratorError
from schemas.errors import Reason

from .codec import ParamsCodecError, decode_params, encode_params
from .reducers import check_same_structure, coordinate_median, cosine, global_norm
from .strategy import Params

__all__ = [
    "DIRECTION_OUTLIER",
    "NON_FINITE",
    "NORM_OUTLIER",
    "AnomalyScreen",
    "IsolationPolicy",
    "ScreenItem",
    "ScreenResult",
    "ScreeningStateError",
]

NON_FINITE = Reason.NON_FINITE.value
NORM_OUTLIER = "norm_outlier"
DIRECTION_OUTLIER = "direction_outlier"

_MAD_TO_SIGMA = 0.6745  # MAD of a normal distribution, in standard deviations
_TINY = 1e-300  # keeps log() finite for an all-zero update


class ScreeningStateError(OrchestratorError, ValueError):
    """A saved screening or isolation state is unreadable."""


class ScreenItem(Protocol):
    """What :meth:`AnomalyScreen.screen_batch` reads; the store's buffered rows conform."""

    @property
    def update_id(self) -> int: ...

    @property
    def sender(self) -> str: ...

    @property
    def delta(self) -> Mapping[str, np.ndarray]: ...


@dataclass(frozen=True)
class ScreenResult:
    update_id: int
    sender: str
    flagged: bool
    reason: str | None
    """``non_finite``, ``norm_outlier``, ``direction_outlier`` or None."""
    norm: float
    z_score: float | None
    """None when there was too little history to judge the norm."""
    cosine: float | None
    """None when there was no reference direction yet."""


@dataclass(frozen=True)
class _Measured:
    update_id: int
    sender: str
    delta: Mapping[str, np.ndarray]
    norm: float
    finite: bool


def _finite(delta: Mapping[str, np.ndarray]) -> bool:
    return all(bool(np.isfinite(a).all()) for a in delta.values())


def _unit(delta: Mapping[str, np.ndarray]) -> Params | None:
    norm = global_norm(delta)
    if not (math.isfinite(norm) and norm > 0):
        return None
    return {k: (np.asarray(v, np.float64) / norm) for k, v in delta.items()}


def _cosine_or_none(
    delta: Mapping[str, np.ndarray], direction: Mapping[str, np.ndarray] | None
) -> float | None:
    if direction is None:
        return None
    try:
        return cosine(delta, direction)
    except ValueError:  # other tensors than the reference (the model changed): no judgement
        return None


class AnomalyScreen:
    """Flags updates whose norm or direction is out of line with recent history.

    ``history``: how many recently accepted norms make the reference. ``min_history``: how
    many reference norms (history plus batch peers) the norm check needs. ``min_aggregates``:
    how many observed aggregates the direction check needs before it trusts the moving
    average. ``direction_decay``: the weight the average keeps at each new aggregate.

    Defaults were tuned on 20 clients training softmax regression on ``load_digits`` split by
    Dirichlet(0.5), 10 updates per version, 4 clients sending sign-flipped updates scaled by
    10 (see the tests). Over 8 seeds of 40 versions: attackers flagged 99-100 % of the time,
    honest updates 0.13 %, no honest device isolated at 3 flags. With ``z_threshold`` 3.5 (the
    textbook value) honest flags were 0.23 %, and a data-rich honest device was isolated once.
    """

    def __init__(
        self,
        *,
        history: int = 100,
        z_threshold: float = 4.0,
        min_cosine: float = -0.2,
        min_history: int = 8,
        min_aggregates: int = 2,
        direction_decay: float = 0.5,
        mad_floor: float = 0.05,
    ) -> None:
        if history < 1 or min_history < 1 or min_aggregates < 1:
            raise ValueError("history, min_history and min_aggregates must be >= 1")
        if not (math.isfinite(z_threshold) and z_threshold > 0):
            raise ValueError(f"z_threshold must be finite and > 0, got {z_threshold!r}")
        if not -1.0 <= min_cosine <= 1.0:
            raise ValueError(f"min_cosine must be in [-1, 1], got {min_cosine!r}")
        if not 0.0 <= direction_decay < 1.0:
            raise ValueError(f"direction_decay must be in [0, 1), got {direction_decay!r}")
        if not 0.0 <= mad_floor < 1.0:
            raise ValueError(f"mad_floor must be in [0, 1), got {mad_floor!r}")
        self._z_threshold = float(z_threshold)
        self._min_cosine = float(min_cosine)
        self._min_history = int(min_history)
        self._min_aggregates = int(min_aggregates)
        self._decay = float(direction_decay)
        self._mad_floor = float(mad_floor)
        self._norms: deque[tuple[int, float]] = deque(maxlen=int(history))
        self._direction: Params | None = None
        self._aggregates = 0

    @property
    def accepted_norms(self) -> tuple[float, ...]:
        """The reference norms, oldest first."""
        return tuple(n for _, n in self._norms)

    @property
    def aggregates_seen(self) -> int:
        return self._aggregates

    def screen(
        self, update_id: int, sender: str, delta: Mapping[str, np.ndarray], *,
        record: bool = True,
    ) -> ScreenResult:
        """Judge one update against history alone. With ``record``, an unflagged update's
        norm joins the history (once per ``update_id``)."""
        return self._judge([self._measure(update_id, sender, delta)], record)[0]

    def screen_batch(
        self, items: Sequence[ScreenItem], *, record: bool = True
    ) -> list[ScreenResult]:
        """Judge updates together (e.g. the aggregation buffer): each one's norm against the
        history plus the batch, its direction against the moving average, or the batch's
        coordinate-wise median while there is none. Results are in the order given; with
        ``record``, the unflagged norms join the history afterwards."""
        return self._judge([self._measure(i.update_id, i.sender, i.delta) for i in items],
                           record)

    def observe_aggregate(self, delta: Mapping[str, np.ndarray]) -> None:
        """Fold an applied aggregate into the reference direction. A model with other tensors
        than the current direction (a new architecture) restarts it."""
        unit = _unit(delta)
        if unit is None:
            return
        if self._direction is not None:
            try:
                check_same_structure([self._direction, unit])
            except ValueError:
                self._direction, self._aggregates = None, 0
        if self._direction is None:
            self._direction = unit
        else:
            d = self._decay
            self._direction = {k: d * self._direction[k] + (1 - d) * v for k, v in unit.items()}
        self._aggregates += 1

    # -- internals ------------------------------------------------------------------------------

    def _measure(self, update_id: int, sender: str, delta: Mapping[str, np.ndarray]) -> _Measured:
        finite = _finite(delta)
        norm = global_norm(delta) if finite else math.nan
        return _Measured(update_id, sender, delta, norm, finite and math.isfinite(norm))

    def _judge(self, batch: list[_Measured], record: bool) -> list[ScreenResult]:
        peers = [m.norm for m in batch if m.finite]
        norms = [n for _, n in self._norms] + (peers if len(batch) > 1 else [])
        reference = np.log(np.maximum(np.asarray(norms, np.float64), _TINY))
        median = mad = 0.0
        norm_check = len(reference) >= self._min_history
        if norm_check:
            median = float(np.median(reference))
            mad = float(np.median(np.abs(reference - median)))
            mad = max(mad, self._mad_floor)
        direction = self._reference_direction(batch)
        results: list[ScreenResult] = []
        for m in batch:
            if not m.finite:
                results.append(ScreenResult(m.update_id, m.sender, True, NON_FINITE, m.norm,
                                            None, None))
                continue
            x = math.log(max(m.norm, _TINY))
            z = _MAD_TO_SIGMA * (x - median) / mad if norm_check else None
            cos = _cosine_or_none(m.delta, direction)
            reason: str | None = None
            if z is not None and z > self._z_threshold:
                reason = NORM_OUTLIER
            elif cos is not None and cos < self._min_cosine:
                reason = DIRECTION_OUTLIER
            results.append(ScreenResult(m.update_id, m.sender, reason is not None, reason,
                                        m.norm, z, cos))
        if record:
            known = {uid for uid, _ in self._norms}
            for r in results:
                if not r.flagged and r.update_id not in known:
                    self._norms.append((r.update_id, r.norm))
                    known.add(r.update_id)
        return results

    def _reference_direction(self, batch: list[_Measured]) -> Mapping[str, np.ndarray] | None:
        if self._direction is not None and self._aggregates >= self._min_aggregates:
            return self._direction
        finite = [m.delta for m in batch if m.finite]
        if len(finite) >= 3:  # a median of two is their mean: no robustness
            median = coordinate_median(finite)
            if global_norm(median) > 0:
                return median
        return None

    # -- state ----------------------------------------------------------------------------------

    def state_dict(self) -> bytes:
        """History, reference direction and aggregate count (settings come from the
        constructor, so a restart may change them)."""
        state: dict[str, Any] = {
            "kind": "anomaly_screen", "v": 1,
            "norms": [[uid, n] for uid, n in self._norms],
            "aggregates": self._aggregates,
            "direction": None if self._direction is None else encode_params(
                {k: np.asarray(v, np.float64) for k, v in self._direction.items()}
            ),
        }
        return bytes(msgpack.packb(state, use_bin_type=True))

    def load_state_dict(self, state: bytes) -> None:
        raw = _unpack(state, "anomaly_screen")
        try:
            norms = [(int(uid), float(n)) for uid, n in raw["norms"]]
            aggregates = int(raw["aggregates"])
            blob = raw["direction"]
            direction = None if blob is None else decode_params(bytes(blob))
        except (KeyError, TypeError, ValueError, ParamsCodecError) as exc:
            raise ScreeningStateError(f"invalid anomaly screen state: {exc}") from None
        self._norms.clear()
        self._norms.extend(norms)  # the deque keeps the newest if history shrank
        self._direction = direction
        self._aggregates = aggregates if direction is not None else 0


class IsolationPolicy:
    """Counts flags per device; ``max_flags`` within ``window_ms`` isolates it.

    :meth:`record_flag` returns True exactly once per offence: when the device reaches
    ``max_flags`` flags in the window (flags of an already isolated device count nothing).
    The service suspends the device, tells it and audits it; :meth:`reinstate` (operator)
    clears its record.
    """

    def __init__(self, *, max_flags: int = 3, window_ms: int = 3_600_000) -> None:
        if max_flags < 1:
            raise ValueError(f"max_flags must be >= 1, got {max_flags!r}")
        if window_ms < 1:
            raise ValueError(f"window_ms must be >= 1, got {window_ms!r}")
        self._max_flags = int(max_flags)
        self._window_ms = int(window_ms)
        self._flags: dict[str, list[int]] = {}
        self._isolated: set[str] = set()

    @property
    def isolated(self) -> frozenset[str]:
        return frozenset(self._isolated)

    def is_isolated(self, device: str) -> bool:
        return device in self._isolated

    def flags(self, device: str) -> tuple[int, ...]:
        """The device's flag times still on record, oldest first."""
        return tuple(self._flags.get(device, ()))

    def record_flag(self, device: str, ts_ms: int) -> bool:
        """Note a flag at ``ts_ms``; True if the device must be isolated now. A flag counts
        while it is less than ``window_ms`` older than the newest flag of the device (flags
        may arrive out of order)."""
        if device in self._isolated:
            return False
        times = self._flags.setdefault(device, [])
        bisect.insort(times, int(ts_ms))
        cutoff = times[-1] - self._window_ms
        del times[: bisect.bisect_right(times, cutoff)]
        if len(times) >= self._max_flags:
            self._isolated.add(device)
            return True
        return False

    def reinstate(self, device: str) -> None:
        """Forget the device's flags and isolation (an operator vouched for it)."""
        self._isolated.discard(device)
        self._flags.pop(device, None)

    def prune(self, now_ms: int) -> None:
        """Drop flags that have left the window (keeps the saved state small)."""
        for device in list(self._flags):
            times = [t for t in self._flags[device] if t > now_ms - self._window_ms]
            if times:
                self._flags[device] = times
            else:
                del self._flags[device]

    def state_dict(self) -> bytes:
        state = {"kind": "isolation_policy", "v": 1,
                 "flags": {d: list(t) for d, t in sorted(self._flags.items())},
                 "isolated": sorted(self._isolated)}
        return bytes(msgpack.packb(state, use_bin_type=True))

    def load_state_dict(self, state: bytes) -> None:
        raw = _unpack(state, "isolation_policy")
        try:
            flags = {str(d): sorted(int(t) for t in ts) for d, ts in raw["flags"].items()}
            isolated = {str(d) for d in raw["isolated"]}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ScreeningStateError(f"invalid isolation state: {exc}") from None
        self._flags = {d: ts for d, ts in flags.items() if ts}
        self._isolated = isolated


def _unpack(state: bytes, kind: str) -> dict[str, Any]:
    try:
        raw = msgpack.unpackb(bytes(state), raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ScreeningStateError(f"unreadable {kind} state: {exc}") from None
    if not isinstance(raw, dict) or raw.get("kind") != kind:
        found = raw.get("kind") if isinstance(raw, dict) else None
        raise ScreeningStateError(f"state is a {found!r}, not a {kind!r}")
    if raw.get("v") != 1:
        raise ScreeningStateError(f"{kind} state has unsupported format {raw.get('v')!r}")
    return raw

