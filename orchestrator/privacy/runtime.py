"""Differential privacy in the running service: what tasks carry, server-side noise, the
federation's accountant and each device's budget (``[privacy]`` in the config).

The maths lives in :mod:`orchestrator.privacy`; this module keeps its state between versions
and plans each version's privacy record so that the service commits it in the version's own
transaction::

    result = await asyncio.to_thread(dp.aggregate, fedbuff, params, version, entries)
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
import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.aggregation import (
    AggregateResult,
    BufferedUpdate,
    FedBuff,
    UpdateLike,
    global_norm,
)
from orchestrator.aggregation.strategy import Params
from orchestrator.config import PrivacyConfig
from orchestrator.privacy import (
    ACCOUNTANT_STATE_KEY,
    POLICY_STATE_KEY,
    DeviceLedger,
    DpPolicy,
    FederationAccountant,
    PrivacyStateError,
    add_server_noise,
)
from orchestrator.store import PrivacyCharge, Store

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


class _StageOnly:
    """A server optimizer that does not step: FedBuff reduces, the runtime noises the
    reduction, then the real optimizer steps on the noised delta (its moments never see an
    un-noised aggregate)."""

    def step(self, params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> Params:
        return dict(params)

    def state_dict(self) -> bytes:
        return b""

    def load_state_dict(self, state: bytes) -> None:
        return None


def _one_sample(update: UpdateLike) -> BufferedUpdate:
    return BufferedUpdate(update.update_id, update.sender, update.base_version, 1,
                          dict(update.delta))


class PrivacyRuntime:
    """The DP state of one running service (inert when ``config.mode`` is ``off``)."""

    def __init__(self, config: PrivacyConfig, *, rng: np.random.Generator | None = None) -> None:
        self._config = config
        self._rng = rng if rng is not None else np.random.default_rng()
        self.policy: DpPolicy | None = None
        if config.enabled:
            self.policy = DpPolicy(
                mode=config.mode,  # type: ignore[arg-type]  # validated by the config schema
                clip_norm=config.clip_norm, noise_multiplier=config.noise_multiplier,
                target_delta=config.target_delta, epsilon_max=config.epsilon_max,
                accountant=config.accountant,  # type: ignore[arg-type]
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

    async def load(self, store: Store) -> None:
        """Restore the accountant and the per-device ledger from the store."""
        policy = self.policy
        if policy is None:
            return
        saved = await store.get_server_state(ACCOUNTANT_STATE_KEY)
        records = await store.privacy_ledger()

        def build() -> tuple[FederationAccountant, DeviceLedger, float]:
            accountant = FederationAccountant.for_policy(policy)
            if saved is not None:
                try:
                    steps = FederationAccountant.from_state(saved).steps
                    # the spend so far stays; new versions use the configured settings
                    accountant = FederationAccountant(
                        policy.noise_multiplier, policy.target_delta, policy.accountant,
                        steps=steps)
                except PrivacyStateError as exc:
                    raise PrivacyStateError(f"cannot restore the privacy accountant: {exc}"
                                            ) from None
            ledger = DeviceLedger.for_policy(policy, records)
            return accountant, ledger, accountant.epsilon()

        self._accountant, self._ledger, self.epsilon = await asyncio.to_thread(build)

    def task_noise(self, clip_norm: float | None, noise_multiplier: float) -> TaskNoise:
        """The clip and noise a task carries: ``[training]``'s when DP is off; the policy's
        clip and (local mode) noise when it is on."""
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

    def aggregate(
        self,
        fedbuff: FedBuff,
        params: Mapping[str, np.ndarray],
        version: int,
        updates: Sequence[UpdateLike],
    ) -> AggregateResult:
        """``fedbuff.aggregate``; in server mode with Gaussian noise added to the reduced
        delta before the server optimizer steps (synchronous: call it in a thread)."""
        policy = self.policy
        if policy is None or policy.mode != "server":
            return fedbuff.aggregate(params, version, updates)
        clip = policy.clip_norm if fedbuff.clip_norm is None else min(fedbuff.clip_norm,
                                                                      policy.clip_norm)
        # the server clips too: the noise is calibrated to clip_norm, whatever a device sent
        staged = dataclasses.replace(fedbuff, clip_norm=clip, optimizer=_StageOnly())
        # every contribution counts as one sample (DP-FedAvg's uniform weighting): with
        # sample-count weights one data-rich device's share, and so the noise, would be large
        result = staged.aggregate(params, version, [_one_sample(u) for u in updates])
        if result.delta is None:
            return result
        weights = [result.weights[uid] for uid in result.used_ids]
        share = max(weights) / sum(weights)
        noised = add_server_noise(
            result.delta, clip_norm=policy.clip_norm,
            noise_multiplier=policy.noise_multiplier, n_participants=len(weights),
            rng=self._rng, max_weight_share=max(share, 1.0 / len(weights)))
        new_params = fedbuff.optimizer.step(params, noised)
        return dataclasses.replace(result, params=new_params, delta=noised,
                                   delta_norm=global_norm(noised))

    def plan(self, senders: Sequence[str], population: int) -> PrivacyPlan | None:
        """The privacy record of a version made from updates by ``senders`` (one entry per
        applied update) out of ``population`` active devices; None when DP is off. Cheap: no
        epsilon is computed here."""
        policy, current = self.policy, self._accountant
        if policy is None or current is None or not senders:
            return None
        counts = Counter(senders)
        accountant = FederationAccountant(policy.noise_multiplier, policy.target_delta,
                                          policy.accountant, steps=current.steps)
        accountant.record_version(len(counts), max(population, len(counts)),
                                  max_contributions=max(counts.values()))
        charges = PrivacyCharge.for_senders(
            senders, noise_multiplier=policy.noise_multiplier, clip_norm=policy.clip_norm,
            mode=policy.mode)
        state = {ACCOUNTANT_STATE_KEY: accountant.state_dict(),
                 POLICY_STATE_KEY: policy.to_bytes()}
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

    async def run(self, store: Store) -> None:
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
            await store.set_version_metrics(version, {EPSILON_METRIC: epsilon})
            async with self._changed:
                self.epsilon, self.accounted_version = epsilon, version
                self._changed.notify_all()

    async def wait_accounted(self, version: int) -> float:
        """Until the epsilon of ``version`` (or a later one) is known; returns it. Wrap it in
        ``asyncio.timeout``."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.accounted_version is not None and self.accounted_version >= version)
            assert self.epsilon is not None
            return self.epsilon
