"""The differential-privacy settings in force, and where their state lives in the store.

Client-level DP (DP-FedAvg, McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018): every device clips its whole delta to ``clip_norm``; Gaussian noise with
standard deviation ``noise_multiplier * clip_norm`` per contribution is added either by each
device to its own clipped delta (``local``), once by the orchestrator to the aggregate
(``server``: a trusted server, see :func:`~.noise.add_server_noise`), or in shares by the
members of each secure bucket so that the bucket's sum carries it (``distributed``: no trusted
server; the sensitivity of a bucket sum is ``clip_norm`` times the weight cap, see
:func:`~.noise.bucket_noise_std`). ``server`` and ``distributed`` are both central DP,
accounted alike.

``sampling`` says how the accountant treats selection: ``none`` (default) accounts every
version as a Gaussian mechanism on the whole population, without amplification by
subsampling, which holds whatever the selection; ``poisson`` assumes each device is included
independently with probability ``participants / population``, which fedmq's selection (by
heartbeat, battery, pace and budget) does not do, so its epsilon is optimistic.

The federation's accountant state and this policy are kept in the store's ``server_state``
under ``StateKey.ACCOUNTANT`` and ``StateKey.PRIVACY_POLICY``, written in the same
transaction as the version they account for; each device's participations are rows of the
store's ``privacy_ledger`` table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, get_args

from ._state import dump_json, load_json
from .errors import PrivacyError, PrivacyStateError

__all__ = [
    "ACCOUNTANT_KINDS",
    "DP_MODES",
    "SAMPLINGS",
    "AccountantKind",
    "DpMode",
    "DpPolicy",
    "Sampling",
]

DpMode = Literal["local", "server", "distributed"]
"""``local``: each device noises its own clipped delta; ``server``: the orchestrator noises the
aggregate (trusted server); ``distributed``: the members of each secure bucket add shares of
noise that sum to the central noise on the bucket's sum (the orchestrator adds none)."""
AccountantKind = Literal["rdp", "pld"]
"""dp-accounting's Rényi-DP accountant (fast, a little loose) or its privacy-loss-distribution
accountant (tight, slower: seconds per distinct sampling rate)."""

Sampling = Literal["none", "poisson"]
"""How the federation accountant treats selection: ``none``, no amplification by subsampling
(q = 1 for every version); ``poisson``, Poisson subsampling at q = participants / population
(an assumption fedmq's selection does not meet)."""

DP_MODES: tuple[DpMode, ...] = get_args(DpMode)
ACCOUNTANT_KINDS: tuple[AccountantKind, ...] = get_args(AccountantKind)
SAMPLINGS: tuple[Sampling, ...] = get_args(Sampling)
LEGACY_SAMPLING: Sampling = "poisson"
"""What a saved state from before the ``sampling`` setting was accounted with."""


def check_target_delta(delta: float) -> None:
    if not (isinstance(delta, int | float) and 0.0 < delta < 1.0):
        raise PrivacyError(f"target_delta must be in (0, 1), got {delta!r}")


def check_sampling(sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise PrivacyError(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise PrivacyError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class DpPolicy:
    """Client-level DP as configured. Constructing one means DP is on, so the noise
    multiplier must be > 0 (with no noise there is nothing to account)."""

    mode: DpMode
    clip_norm: float
    noise_multiplier: float
    target_delta: float = 1e-5
    epsilon_max: float | None = None
    """Each device's own budget; a device that would exceed it is no longer selected."""
    accountant: AccountantKind = "rdp"
    sampling: Sampling = "none"
    """How the federation accountant treats selection (see :data:`Sampling`)."""

    def __post_init__(self) -> None:
        if self.mode not in DP_MODES:
            raise PrivacyError(f"mode must be one of {DP_MODES}, not {self.mode!r}")
        if self.accountant not in ACCOUNTANT_KINDS:
            raise PrivacyError(
                f"accountant must be one of {ACCOUNTANT_KINDS}, not {self.accountant!r}"
            )
        check_sampling(self.sampling)
        _positive("clip_norm", self.clip_norm)
        _positive("noise_multiplier", self.noise_multiplier)
        check_target_delta(self.target_delta)
        if self.epsilon_max is not None:
            _positive("epsilon_max", self.epsilon_max)

    def to_bytes(self) -> bytes:
        return dump_json("dp_policy", asdict(self))

    @classmethod
    def from_bytes(cls, state: bytes) -> DpPolicy:
        raw = load_json(state, "dp_policy")
        try:
            return cls(
                mode=raw["mode"], clip_norm=raw["clip_norm"],
                noise_multiplier=raw["noise_multiplier"], target_delta=raw["target_delta"],
                epsilon_max=raw["epsilon_max"], accountant=raw["accountant"],
                # saved before the setting existed: accounted with Poisson subsampling then
                sampling=raw.get("sampling", LEGACY_SAMPLING),
            )
        except KeyError as exc:
            raise PrivacyStateError(f"saved DP policy lacks {exc.args[0]!r}") from None
        except PrivacyError as exc:
            raise PrivacyStateError(f"saved DP policy is invalid: {exc}") from None

