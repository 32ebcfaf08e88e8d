"""Each device's own privacy spend and budget.

A device's epsilon never counts amplification by subsampling, whatever ``[privacy] sampling``
says: whether it was selected is not secret from its own point of view (and selection does not
look at its data), so each version it contributed to is one Gaussian mechanism on its data
(q = 1), with noise multiplier ``z / m`` when it put ``m`` updates into that version, and a
version it sat out costs it nothing. This is the accountant's ``sampling = "none"`` applied to
one device: under it no device's epsilon exceeds the federation's. Under ``poisson`` the
federation's figure is amplified and a device's is not, so a frequent participant may show
more than the federation. The same holds in every mode: noise ``z * C`` on its own clipped
delta (``local``), on a sum its delta moves by at most ``C`` (``server``), or ``z * C * W`` on a
secure bucket's sum its delta, weighed by at most ``W``, moves by at most ``C * W``
(``distributed``; ``m`` then counts the version's buckets it was a member of).

``rdp`` composes with dp-accounting's RDP accountant. ``pld`` uses dp-accounting's exact
Gaussian epsilon: composed Gaussian mechanisms are one Gaussian with multiplier
``(sum 1/z_i^2)^(-1/2)``, which is what its PLD accountant converges to, without the seconds a
narrow PLD takes per device.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import dp_accounting

from .accountant import new_accountant
from .errors import PrivacyError
from .policy import ACCOUNTANT_KINDS, AccountantKind, DpPolicy, check_target_delta

__all__ = ["DeviceLedger", "DeviceSpend", "ParticipationLike"]


class ParticipationLike(Protocol):
    """One device's part in one version, as the store's privacy ledger rows hold it."""

    @property
    def device_id(self) -> str: ...

    @property
    def noise_multiplier(self) -> float: ...

    @property
    def contributions(self) -> int: ...


@dataclass(frozen=True)
class DeviceSpend:
    device_id: str
    participations: int
    """Versions the device contributed to."""
    epsilon: float
    budget: float | None
    budget_left: bool
    """Whether one more participation keeps it within ``budget``."""


def _device_epsilon(
    events: Counter[float], kind: AccountantKind, target_delta: float
) -> float:
    """Epsilon of composed Gaussian mechanisms (effective multiplier -> count)."""
    if not events:
        return 0.0
    if any(z == 0 for z in events):
        return math.inf
    if kind == "pld":
        precision = sum(n / (z * z) for z, n in events.items())
        return float(dp_accounting.get_epsilon_gaussian(1.0 / math.sqrt(precision),
                                                        target_delta))
    impl = new_accountant(kind)
    for z, n in events.items():
        impl.compose(dp_accounting.GaussianDpEvent(z), n)
    return float(impl.get_epsilon(target_delta))


class DeviceLedger:
    """Participations per device, their epsilon, and the per-device budget.

    ``noise_multiplier`` is the one the next participation would use (the policy's): a device
    has budget left when one more participation at it keeps its epsilon <= ``epsilon_max``, so
    selection never takes a device past its budget.
    """

    def __init__(
        self,
        noise_multiplier: float,
        target_delta: float,
        epsilon_max: float | None = None,
        accountant: AccountantKind = "rdp",
    ) -> None:
        if not (isinstance(noise_multiplier, int | float) and math.isfinite(noise_multiplier)
                and noise_multiplier >= 0):
            raise PrivacyError(f"noise_multiplier must be a finite number >= 0, "
                               f"got {noise_multiplier!r}")
        check_target_delta(target_delta)
        if epsilon_max is not None and not (math.isfinite(epsilon_max) and epsilon_max > 0):
            raise PrivacyError(f"epsilon_max must be a finite number > 0, got {epsilon_max!r}")
        if accountant not in ACCOUNTANT_KINDS:
            raise PrivacyError(f"accountant must be one of {ACCOUNTANT_KINDS}, not {accountant!r}")
        self._z = float(noise_multiplier)
        self._delta = float(target_delta)
        self._epsilon_max = epsilon_max
        self._kind: AccountantKind = accountant
        self._events: dict[str, Counter[float]] = {}
        self._count: Counter[str] = Counter()
        self._cache: dict[str, float] = {}
        self._next_cache: dict[str, float] = {}  # selection asks on every heartbeat

    @classmethod
    def for_policy(
        cls, policy: DpPolicy, records: Iterable[ParticipationLike] = ()
    ) -> DeviceLedger:
        ledger = cls(policy.noise_multiplier, policy.target_delta, policy.epsilon_max,
                     policy.accountant)
        ledger.record_all(records)
        return ledger

    @property
    def epsilon_max(self) -> float | None:
        return self._epsilon_max

    @property
    def target_delta(self) -> float:
        return self._delta

    def record(self, device_id: str, noise_multiplier: float, *, contributions: int = 1) -> None:
        """Note that ``device_id`` took part in one version with ``contributions`` updates."""
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise PrivacyError(f"noise_multiplier must be a finite number >= 0, "
                               f"got {noise_multiplier!r}")
        if isinstance(contributions, bool) or not isinstance(contributions, int) \
                or contributions < 1:
            raise PrivacyError(f"contributions must be an integer >= 1, got {contributions!r}")
        self._events.setdefault(device_id, Counter())[noise_multiplier / contributions] += 1
        self._count[device_id] += 1
        self._cache.pop(device_id, None)
        self._next_cache.pop(device_id, None)

    def record_all(self, records: Iterable[ParticipationLike]) -> None:
        for r in records:
            self.record(r.device_id, r.noise_multiplier, contributions=r.contributions)

    def devices(self) -> list[str]:
        """Devices with at least one participation, by id."""
        return sorted(self._count)

    def participations(self, device_id: str) -> int:
        return self._count[device_id]

    def epsilon(self, device_id: str) -> float:
        """The device's epsilon so far (0.0 if it never took part)."""
        eps = self._cache.get(device_id)
        if eps is None:
            eps = _device_epsilon(self._events.get(device_id, Counter()), self._kind,
                                  self._delta)
            self._cache[device_id] = eps
        return eps

    def epsilon_after_next(self, device_id: str) -> float:
        """The device's epsilon if it took part once more at the current multiplier."""
        eps = self._next_cache.get(device_id)
        if eps is None:
            events = Counter(self._events.get(device_id, Counter()))
            events[self._z] += 1
            eps = self._next_cache[device_id] = _device_epsilon(events, self._kind, self._delta)
        return eps

    def budget_left(self, device_id: str) -> bool:
        """Whether the device may be selected again (always, without a budget)."""
        if self._epsilon_max is None:
            return True
        return self.epsilon_after_next(device_id) <= self._epsilon_max

    def exhausted(self) -> list[str]:
        """Devices (among those that took part) whose budget is spent, by id."""
        return [d for d in self.devices() if not self.budget_left(d)]

    def spend(self, device_id: str) -> DeviceSpend:
        return DeviceSpend(device_id, self.participations(device_id), self.epsilon(device_id),
                           self._epsilon_max, self.budget_left(device_id))
