"""The federation's (epsilon, delta), accounted with dp-accounting (not by hand).

Each model version is one Gaussian mechanism on the version's aggregate, with the configured
noise multiplier divided by the most updates any one device contributed to that version (its
sensitivity grows with every extra contribution). How selection enters is ``sampling``:

- ``none`` (the default): no amplification by subsampling. Every version is charged as if every
  device had taken part (q = 1). This is the figure that holds for fedmq: selection answers
  heartbeats by battery, thermal state, pace, participation caps and budgets, so taking part is
  neither independent across devices nor random at a known rate, and neither Poisson
  subsampling nor fixed-size sampling without replacement describes it.
- ``poisson``: each version is a Poisson-subsampled Gaussian at ``q = participants /
  population`` (population = the enrolled, active devices when the version was made), the
  usual approximation in federated DP accounting. Kept for comparison: fedmq's selection does
  not meet its assumption, so its epsilon is optimistic.

Each step keeps the rate it observed (``participants / population``) under either setting, so
one history can be accounted under both; the accountant's ``sampling`` decides which
:meth:`FederationAccountant.epsilon` reports. A state saved before the setting existed has no
``sampling`` key and was accounted with ``poisson``: it loads as such.

Noise added by each device (``local`` mode) is accounted like noise added once at the server:
conservative, since the aggregate of n locally noised deltas carries sqrt(n) times more noise.
Noise added in shares by the members of secure buckets (``distributed`` mode) is central noise
and accounted exactly like ``server`` mode: each bucket's sum carries Gaussian-equivalent
(Skellam) noise of ``z`` times its sensitivity, ``clip_norm`` times the weight cap, and a
version is a post-processing of its buckets' sums.

The saved state is the list of steps, run-length compressed: ``(q, z, count)``. Epsilon is
always computed afresh from the steps (one :class:`dp_accounting.SelfComposedDpEvent` per
distinct accounted ``(q, z)``: composition does not depend on order), so a reloaded accountant
reports exactly the epsilon the saved one did. Everything here is synchronous CPU work: call it
through ``asyncio.to_thread`` (about 0.1 s per distinct (q, z) for RDP, a second for PLD).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import dp_accounting
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from ._state import dump_json, load_json
from .errors import PrivacyError, PrivacyStateError
from .policy import (
    ACCOUNTANT_KINDS,
    LEGACY_SAMPLING,
    AccountantKind,
    DpPolicy,
    Sampling,
    check_sampling,
    check_target_delta,
)

__all__ = ["AccountantStep", "FederationAccountant", "new_accountant", "sampling_rate"]


class _DropExcludedOrderWarnings(logging.Filter):
    """dp-accounting's RDP accountant logs a warning each time a fractional order fails to
    converge (large sampling rates); it then leaves that order out, which keeps the bound
    valid. Accounting every version would repeat it endlessly, so only that message is
    dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("_compute_log_a_frac failed to converge")


_absl_logger = logging.getLogger("absl")
if not any(isinstance(f, _DropExcludedOrderWarnings) for f in _absl_logger.filters):
    _absl_logger.addFilter(_DropExcludedOrderWarnings())


def new_accountant(kind: AccountantKind) -> dp_accounting.PrivacyAccountant:
    """A fresh dp-accounting accountant of ``kind`` with the library's defaults
    (add-or-remove-one neighbours; default RDP orders; PLD discretization 1e-4)."""
    if kind == "rdp":
        return RdpAccountant()
    if kind == "pld":
        return PLDAccountant()
    raise PrivacyError(f"accountant must be one of {ACCOUNTANT_KINDS}, not {kind!r}")


def sampling_rate(participants: int, population: int) -> float:
    """``participants / population``, capped at 1 (a device may have left meanwhile)."""
    if isinstance(participants, bool) or not isinstance(participants, int) or participants < 1:
        raise PrivacyError(f"participants must be an integer >= 1, got {participants!r}")
    if isinstance(population, bool) or not isinstance(population, int) or population < 1:
        raise PrivacyError(f"population must be an integer >= 1, got {population!r}")
    return min(1.0, participants / population)


def _check_multiplier(value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise PrivacyError(f"noise_multiplier must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class AccountantStep:
    """``count`` consecutive versions with the same sampling rate and noise multiplier."""

    sampling_rate: float
    """The rate observed, ``participants / population`` (accounted under ``poisson`` only)."""
    noise_multiplier: float
    """Effective multiplier: the configured one divided by the version's most contributions
    by one device."""
    count: int = 1

    def __post_init__(self) -> None:
        q = self.sampling_rate
        if not (isinstance(q, int | float) and 0.0 < q <= 1.0):
            raise PrivacyError(f"sampling_rate must be in (0, 1], got {q!r}")
        _check_multiplier(self.noise_multiplier)
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise PrivacyError(f"count must be an integer >= 1, got {self.count!r}")

    def accounted_rate(self, sampling: Sampling) -> float:
        """The sampling rate ``sampling`` accounts: the observed one for ``poisson``, 1 (no
        amplification) for ``none``."""
        return self.sampling_rate if sampling == "poisson" else 1.0

    def event(self, sampling: Sampling) -> dp_accounting.DpEvent:
        """The dp-accounting event for all ``count`` versions under ``sampling``."""
        q = self.accounted_rate(sampling)
        one: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if q < 1.0:
            one = dp_accounting.PoissonSampledDpEvent(q, one)
        return one if self.count == 1 else dp_accounting.SelfComposedDpEvent(one, self.count)


class FederationAccountant:
    """The federation's privacy spend, one step per model version."""

    def __init__(
        self,
        noise_multiplier: float,
        target_delta: float,
        accountant: AccountantKind = "rdp",
        *,
        steps: Iterable[AccountantStep] = (),
        sampling: Sampling = "none",
    ) -> None:
        _check_multiplier(noise_multiplier)
        check_target_delta(target_delta)
        check_sampling(sampling)
        self._noise_multiplier = float(noise_multiplier)
        self._target_delta = float(target_delta)
        if accountant not in ACCOUNTANT_KINDS:
            raise PrivacyError(f"accountant must be one of {ACCOUNTANT_KINDS}, not {accountant!r}")
        self._kind: AccountantKind = accountant
        self._sampling: Sampling = sampling
        self._steps: list[AccountantStep] = []
        self._epsilon: float | None = None  # None: recompute from the steps when asked
        for step in steps:
            self._append(step)

    @classmethod
    def for_policy(cls, policy: DpPolicy) -> FederationAccountant:
        return cls(policy.noise_multiplier, policy.target_delta, policy.accountant,
                   sampling=policy.sampling)

    @property
    def noise_multiplier(self) -> float:
        """The multiplier new versions are recorded with unless told otherwise."""
        return self._noise_multiplier

    @property
    def target_delta(self) -> float:
        return self._target_delta

    @property
    def kind(self) -> AccountantKind:
        return self._kind

    @property
    def sampling(self) -> Sampling:
        """How selection is accounted (see the module's docstring)."""
        return self._sampling

    @property
    def amplification(self) -> bool:
        """Whether the epsilon counts amplification by subsampling (``poisson`` only)."""
        return self._sampling == "poisson"

    @property
    def steps(self) -> tuple[AccountantStep, ...]:
        return tuple(self._steps)

    @property
    def versions(self) -> int:
        """How many versions have been accounted."""
        return sum(s.count for s in self._steps)

    def record_version(
        self,
        participants: int,
        population: int,
        *,
        noise_multiplier: float | None = None,
        max_contributions: int = 1,
    ) -> AccountantStep:
        """Account one version made from ``participants`` distinct devices out of
        ``population``; ``max_contributions`` is the most updates one device put into it.
        Returns the step as recorded (observed sampling rate, effective multiplier)."""
        z = self._noise_multiplier if noise_multiplier is None else noise_multiplier
        _check_multiplier(z)
        if (isinstance(max_contributions, bool) or not isinstance(max_contributions, int)
                or max_contributions < 1):
            raise PrivacyError(f"max_contributions must be an integer >= 1, "
                               f"got {max_contributions!r}")
        step = AccountantStep(sampling_rate(participants, population), z / max_contributions)
        self._append(step)
        self._epsilon = None
        return step

    def epsilon(self) -> float:
        """Epsilon spent so far at ``target_delta`` (0.0 before the first version; inf if a
        version had no noise)."""
        if self._epsilon is None:
            self._epsilon = _epsilon_of(self._steps, self._kind, self._target_delta,
                                        self._sampling)
        return self._epsilon

    def dp_event(self) -> dp_accounting.DpEvent:
        """All versions as one dp-accounting event (what :meth:`epsilon` accounts)."""
        return dp_accounting.ComposedDpEvent([s.event(self._sampling) for s in self._steps])

    def state_dict(self) -> bytes:
        return dump_json("federation_accountant", {
            "accountant": self._kind,
            "noise_multiplier": self._noise_multiplier,
            "sampling": self._sampling,
            "target_delta": self._target_delta,
            "steps": [[s.sampling_rate, s.noise_multiplier, s.count] for s in self._steps],
        })

    @classmethod
    def from_state(cls, state: bytes) -> FederationAccountant:
        """Rebuild a saved accountant (raises :class:`PrivacyStateError`)."""
        raw = load_json(state, "federation_accountant")
        try:
            steps = [AccountantStep(float(q), float(z), int(n)) for q, z, n in raw["steps"]]
            return cls(raw["noise_multiplier"], raw["target_delta"], raw["accountant"],
                       steps=steps, sampling=raw.get("sampling", LEGACY_SAMPLING))
        except KeyError as exc:
            raise PrivacyStateError(f"saved accountant lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise PrivacyStateError(f"saved accountant is invalid: {exc}") from None

    def _append(self, step: AccountantStep) -> None:
        last = self._steps[-1] if self._steps else None
        if (last is not None and last.sampling_rate == step.sampling_rate
                and last.noise_multiplier == step.noise_multiplier):
            self._steps[-1] = AccountantStep(last.sampling_rate, last.noise_multiplier,
                                             last.count + step.count)
        else:
            self._steps.append(step)


def _epsilon_of(steps: list[AccountantStep], kind: AccountantKind, target_delta: float,
                sampling: Sampling) -> float:
    """Compose every step afresh, one event per distinct accounted (q, z): the result depends
    only on the steps and ``sampling``, so a reloaded accountant gives the very same number,
    and a PLD accountant is built once instead of convolved version by version (without
    amplification every step of one multiplier is one event, whatever rates it observed)."""
    if not steps:
        return 0.0
    grouped: dict[tuple[float, float], int] = {}
    for s in steps:
        key = (s.accounted_rate(sampling), s.noise_multiplier)
        grouped[key] = grouped.get(key, 0) + s.count
    impl = new_accountant(kind)
    for (q, z), n in grouped.items():
        impl.compose(AccountantStep(q, z, n).event(sampling))
    return float(impl.get_epsilon(target_delta))
