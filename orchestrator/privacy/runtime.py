"""Differential privacy in the running service: what tasks carry, server-side noise, the
federation's accountant and each device's budget (``[privacy]`` in the config).

The maths lives in :mod:`orchestrator.privacy` (server-side noise is a strategy wrapper,
:class:`~orchestrator.privacy.server_noise.ServerNoise`); this module keeps the DP state
between versions and plans each version's privacy record so that the service commits it in
the version's own transaction::

    plan = dp.plan(senders, population)
    info = await store.commit_version(..., privacy=plan.charges,
                                      server_state={..., **plan.server_state})
    await dp.committed(plan, info.version)  # adopts the accountant, charges the ledger

and runs :meth:`PrivacyRuntime.run` as a task: it computes the federation's epsilon after each
version in a worker thread (seconds with many distinct sampling rates, so never on the
aggregation path) and records it as the version's ``privacy_epsilon`` metric. The service asks
:meth:`PrivacyRuntime.budget_left` before it tasks a device.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.config import PrivacyConfig
from orchestrator.privacy import (
    DeviceLedger,
    DpMode,
    DpPolicy,
    FederationAccountant,
    PrivacyStateError,
)
from orchestrator.store import PrivacyCharge, Store
from orchestrator.store.state_keys import StateKey

__all__ = ["PrivacyPlan", "PrivacyRuntime", "TaskNoise"]

EPSILON_METRIC = "privacy_epsilon"


@dataclass(frozen=True, slots=True)
class TaskNoise:
    """What a task tells the device to do to its delta."""

    clip_norm: float | None
    noise_multiplier: float


@dataclass(frozen=True)
class PrivacyPlan:
    """One version's privacy record, made before the commit and adopted after it."""

    charges: list[PrivacyCharge]
    server_state: dict[str, bytes]
    accountant: FederationAccountant
    contributions: Mapping[str, int]


class PrivacyRuntime:
    """The DP state of one running service (inert when ``config.mode`` is ``off``)."""

    def __init__(self, config: PrivacyConfig, store: Store) -> None:
        self._config = config
        self._store = store
        self.policy: DpPolicy | None = None
        if config.mode != "off":
            self.policy = DpPolicy(
                mode=config.mode, clip_norm=config.clip_norm,
                noise_multiplier=config.noise_multiplier, target_delta=config.target_delta,
                epsilon_max=config.epsilon_max, accountant=config.accountant,
                sampling=config.sampling,
            )
        self._accountant: FederationAccountant | None = None
        self._ledger: DeviceLedger | None = None
        self.epsilon: float | None = None
        """The federation's epsilon as of :attr:`accounted_version` (None: DP off)."""
        self.accounted_version: int | None = None
        self._pending: tuple[int, FederationAccountant] | None = None
        self._changed = asyncio.Condition()

    @property
    def enabled(self) -> bool:
        return self.policy is not None

    async def load(self) -> None:
        """Restore the accountant and the per-device ledger from the store."""
        policy = self.policy
        if policy is None:
            return
        saved = await self._store.get_server_state(StateKey.ACCOUNTANT)
        records = await self._store.privacy_ledger()

        def build() -> tuple[FederationAccountant, DeviceLedger, float]:
            accountant = FederationAccountant.for_policy(policy)
            if saved is not None:
                try:
                    steps = FederationAccountant.from_state(saved).steps
                    # the spend so far stays; new versions use the configured settings
                    # and the whole history is accounted under the configured sampling
                    accountant = FederationAccountant(
                        policy.noise_multiplier, policy.target_delta, policy.accountant,
                        steps=steps, sampling=policy.sampling)
                except PrivacyStateError as exc:
                    raise PrivacyStateError(f"cannot restore the privacy accountant: {exc}"
                                            ) from None
            ledger = DeviceLedger.for_policy(policy, records)
            return accountant, ledger, accountant.epsilon()

        self._accountant, self._ledger, self.epsilon = await asyncio.to_thread(build)

    @property
    def mode(self) -> DpMode | None:
        """The DP mode in force (None: DP off)."""
        return None if self.policy is None else self.policy.mode

    @property
    def clip_norm(self) -> float | None:
        """The L2 norm every delta is clipped to (None: DP off, tasks carry ``[training]``'s)."""
        return None if self.policy is None else self.policy.clip_norm

    @property
    def central_noise_multiplier(self) -> float:
        """The multiplier ``z`` the noise of a secure bucket's members must add up to on the
        bucket's sum, relative to its sensitivity ``clip_norm`` times the weight cap (see
        :func:`~orchestrator.privacy.noise.bucket_noise_std`): the configured one in
        ``distributed`` mode, 0.0 otherwise (``local``: each device's own noise is in its
        task; ``server``: the orchestrator adds it; off: none)."""
        policy = self.policy
        if policy is None or policy.mode != "distributed":
            return 0.0
        return policy.noise_multiplier

    def task_noise(self, clip_norm: float | None, noise_multiplier: float) -> TaskNoise:
        """The clip and noise a task carries: ``[training]``'s when DP is off; the policy's
        clip and (local mode) noise when it is on. ``server`` and ``distributed`` tasks carry
        noise 0 for the device's own Gaussian path: in ``distributed`` mode the secure-bucket
        code adds :attr:`central_noise_multiplier` in shares instead."""
        policy = self.policy
        if policy is None:
            return TaskNoise(clip_norm, noise_multiplier)
        z = policy.noise_multiplier if policy.mode == "local" else 0.0
        return TaskNoise(policy.clip_norm, z)

    def budget_left(self, device_id: str) -> bool:
        """Whether one more participation keeps the device within its budget (cached per
        device until it is charged again; the service warms the cache in a thread)."""
        if self._ledger is None:
            return True
        return self._ledger.budget_left(device_id)

    def spent(self, device_id: str) -> float:
        return 0.0 if self._ledger is None else self._ledger.epsilon(device_id)

    def plan(self, senders: Sequence[str], population: int) -> PrivacyPlan | None:
        """The privacy record of a version made from updates by ``senders`` (one entry per
        applied update; in ``distributed`` mode one per member of each secure bucket the
        version applied) out of ``population`` active devices; None when DP is off. Cheap: no
        epsilon is computed here."""
        policy, current = self.policy, self._accountant
        if policy is None or current is None or not senders:
            return None
        counts = Counter(senders)
        accountant = FederationAccountant(policy.noise_multiplier, policy.target_delta,
                                          policy.accountant, steps=current.steps,
                                          sampling=policy.sampling)
        accountant.record_version(len(counts), max(population, len(counts)),
                                  max_contributions=max(counts.values()))
        charges = PrivacyCharge.for_senders(
            senders, noise_multiplier=policy.noise_multiplier, clip_norm=policy.clip_norm,
            mode=policy.mode)
        state: dict[str, bytes] = {StateKey.ACCOUNTANT: accountant.state_dict(),
                                   StateKey.PRIVACY_POLICY: policy.to_bytes()}
        return PrivacyPlan(charges, state, accountant, dict(counts))

    async def committed(self, plan: PrivacyPlan, version: int) -> None:
        """Adopt a plan whose ``version`` is committed: the new accountant, the devices'
        charges, and their budgets recomputed in a thread; :meth:`run` accounts it."""
        ledger, policy = self._ledger, self.policy
        assert ledger is not None and policy is not None
        self._accountant = plan.accountant
        async with self._changed:
            self._pending = (version, plan.accountant)
            self._changed.notify_all()
        for device, k in plan.contributions.items():
            ledger.record(device, policy.noise_multiplier, contributions=k)

        def warm() -> None:
            for device in plan.contributions:
                ledger.budget_left(device)

        await asyncio.to_thread(warm)

    async def run(self) -> None:
        """Forever: the epsilon of the latest committed version, computed in a thread and
        saved as its ``privacy_epsilon`` metric (versions made meanwhile are skipped: the
        latest figure covers them)."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._pending is not None)
                assert self._pending is not None
                version, accountant = self._pending
                self._pending = None
            epsilon = await asyncio.to_thread(accountant.epsilon)
            await self._store.set_version_metrics(version, {EPSILON_METRIC: epsilon})
            async with self._changed:
                self.epsilon, self.accounted_version = epsilon, version
                self._changed.notify_all()
