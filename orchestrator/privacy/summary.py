"""The privacy report: the federation's epsilon and each device's spend, and in words which
accounting gave them (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .accountant import FederationAccountant
from .ledger import DeviceLedger, DeviceSpend, ParticipationLike
from .policy import DpMode, DpPolicy, Sampling

__all__ = ["PrivacySummary", "accounting_words", "mode_words", "summarize"]

_MODE_WORDS: dict[DpMode, str] = {
    "local": "each device adds Gaussian noise to its own clipped delta",
    "server": "the orchestrator adds Gaussian noise to each aggregate (a trusted server)",
    "distributed": "the members of each secure bucket add shares of the noise on its sum "
                   "(no trusted server); charged as central noise, like server mode",
}
_SAMPLING_WORDS: dict[Sampling, str] = {
    "none": "every version charged as a Gaussian mechanism without amplification by "
            "subsampling (sampling = \"none\": fedmq's selection is not Poisson sampling)",
    "poisson": "every version charged as a Poisson-subsampled Gaussian at q = participants / "
               "population (sampling = \"poisson\"): an assumption fedmq's selection does not "
               "meet, so this epsilon is optimistic",
}
DEVICE_WORDS = ("each device's epsilon: its own participations, each a Gaussian mechanism, "
                "never amplified by subsampling")


def mode_words(mode: DpMode) -> str:
    """Where the noise comes from, in words."""
    return _MODE_WORDS[mode]


def accounting_words(sampling: Sampling) -> str:
    """How the federation's epsilon treats selection, in words."""
    return _SAMPLING_WORDS[sampling]


@dataclass(frozen=True)
class PrivacySummary:
    enabled: bool
    """Whether a DP policy is in force (one was saved in the store)."""
    policy: DpPolicy | None
    epsilon: float | None
    """The federation's epsilon at ``target_delta`` (None: nothing was ever accounted)."""
    target_delta: float | None
    versions: int
    """Versions accounted."""
    devices: tuple[DeviceSpend, ...]
    sampling: Sampling | None = None
    """How the federation's epsilon treats selection (the accountant's, else the policy's)."""

    @property
    def amplification(self) -> bool | None:
        """Whether the federation's epsilon counts amplification by subsampling."""
        return None if self.sampling is None else self.sampling == "poisson"

    @property
    def accounting(self) -> str | None:
        """:attr:`sampling` in words (None: nothing accounted, no policy)."""
        return None if self.sampling is None else accounting_words(self.sampling)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; an unbounded epsilon (a version without noise) becomes null."""
        p = self.policy
        return {
            "enabled": self.enabled,
            "mode": p.mode if p else None,
            "noise": mode_words(p.mode) if p else None,
            "sampling": self.sampling,
            "amplification": self.amplification,
            "accounting": self.accounting,
            "device_amplification": False,
            "accountant": p.accountant if p else None,
            "noise_multiplier": p.noise_multiplier if p else None,
            "clip_norm": p.clip_norm if p else None,
            "epsilon_max": p.epsilon_max if p else None,
            "epsilon": _finite(self.epsilon),
            "target_delta": self.target_delta,
            "versions_accounted": self.versions,
            "devices": [
                {"device_id": d.device_id, "participations": d.participations,
                 "epsilon": _finite(d.epsilon), "budget": d.budget,
                 "budget_left": d.budget_left}
                for d in self.devices
            ],
        }


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def summarize(
    policy: DpPolicy | None,
    accountant: FederationAccountant | None,
    records: Iterable[ParticipationLike] = (),
    device_ids: Iterable[str] = (),
) -> PrivacySummary:
    """Build the report from the saved policy and accountant, the ledger's participation
    records and the registered devices (listed even if they never took part). CPU-bound with
    the PLD accountant: call it through ``asyncio.to_thread``."""
    ledger: DeviceLedger | None = None
    if policy is not None:
        ledger = DeviceLedger.for_policy(policy, records)
    elif accountant is not None:  # DP switched off since: still show what was spent
        ledger = DeviceLedger(accountant.noise_multiplier, accountant.target_delta, None,
                              accountant.kind)
        ledger.record_all(records)
    devices: tuple[DeviceSpend, ...] = ()
    if ledger is not None:
        ids = sorted(set(device_ids) | set(ledger.devices()))
        devices = tuple(ledger.spend(d) for d in ids)
    epsilon: float | None = None
    if accountant is not None:
        epsilon = accountant.epsilon()
    elif policy is not None:
        epsilon = 0.0
    delta = accountant.target_delta if accountant else (policy.target_delta if policy else None)
    # the accountant computed the epsilon: its assumption is the one to state
    sampling = accountant.sampling if accountant else (policy.sampling if policy else None)
    return PrivacySummary(
        enabled=policy is not None, policy=policy, epsilon=epsilon, target_delta=delta,
        versions=accountant.versions if accountant else 0, devices=devices, sampling=sampling,
    )
