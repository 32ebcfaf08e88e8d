"""Client-level differential privacy: settings, server-side noise, the federation's
accountant (dp-accounting) and each device's budget ledger. Pure and synchronous: the service
owns the store and every await (run :meth:`FederationAccountant.epsilon` in a thread).

Per aggregated version, the service does about this::

    senders = [u.sender for u in used]                  # one entry per applied update
    counts = Counter(senders)
    if policy.mode == "server":     # "distributed": the buckets' members added it already
        delta = add_server_noise(delta, clip_norm=policy.clip_norm,
                                 noise_multiplier=policy.noise_multiplier,
                                 n_participants=len(used), rng=rng)
    accountant.record_version(len(counts), population, max_contributions=max(counts.values()))
    await store.commit_version(
        ..., privacy=PrivacyCharge.for_senders(senders, noise_multiplier=policy.noise_multiplier,
                                               clip_norm=policy.clip_norm, mode=policy.mode),
        server_state={StateKey.ACCOUNTANT: accountant.state_dict(),
                      StateKey.PRIVACY_POLICY: policy.to_bytes()})
    for device, k in counts.items():
        ledger.record(device, policy.noise_multiplier, contributions=k)

and selection skips a device unless ``ledger.budget_left(device)`` (``Reason.BUDGET_EXHAUSTED``).
"""

from .accountant import AccountantStep, FederationAccountant, new_accountant, sampling_rate
from .errors import PrivacyError, PrivacyStateError
from .ledger import DeviceLedger, DeviceSpend, ParticipationLike
from .noise import add_server_noise, bucket_noise_std, server_noise_std
from .policy import (
    ACCOUNTANT_KINDS,
    DP_MODES,
    SAMPLINGS,
    AccountantKind,
    DpMode,
    DpPolicy,
    Sampling,
)
from .summary import PrivacySummary, summarize

__all__ = [
    "ACCOUNTANT_KINDS",
    "DP_MODES",
    "SAMPLINGS",
    "AccountantKind",
    "AccountantStep",
    "DeviceLedger",
    "DeviceSpend",
    "DpMode",
    "DpPolicy",
    "FederationAccountant",
    "ParticipationLike",
    "PrivacyError",
    "PrivacyStateError",
    "PrivacySummary",
    "Sampling",
    "add_server_noise",
    "bucket_noise_std",
    "new_accountant",
    "sampling_rate",
    "server_noise_std",
    "summarize",
]
