"""Federated evaluation: some devices evaluate a version on their held-out data and the
reports are combined, sample-weighted, into that version's metrics (pure; no I/O).

Every ``every``-th published version is offered to the first ``devices`` distinct devices that
ask for work while it is current; each gets a ``Task(action=evaluate)``. A report counts only
when it answers a task handed out here (same device and task id), once. For an unsupervised
model the reports carry noisy histograms of held-out anomaly scores: their sum gives the
version's anomaly threshold (:func:`agreed_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from schemas.annex import SCORE_BINS, histogram_quantile
from schemas.messages import EvalReport

__all__ = ["FederatedEvaluation", "agreed_threshold", "combine_reports"]


@dataclass(frozen=True, slots=True)
class _Report:
    samples: int
    loss: float
    metric: float
    hist: list[float]


def agreed_threshold(reports: list[tuple[int, list[float]]], quantile: float,
                     min_samples: int) -> dict[str, float]:
    """The anomaly threshold from the devices' ``(samples, noisy score histogram)``: the
    ``quantile`` of the histograms' sum, once they describe at least ``min_samples``."""
    usable = [(n, h) for n, h in reports if len(h) == SCORE_BINS and n > 0]
    total = sum(n for n, _ in usable)
    if not usable or total < min_samples:
        return {}
    summed = np.sum([np.asarray(h, dtype=np.float64) for _, h in usable], axis=0)
    threshold, _ = histogram_quantile(summed.tolist(), quantile, total=total)
    return {"anomaly_threshold": threshold, "anomaly_samples": float(total)}


def combine_reports(reports: list[tuple[int, float, float]]) -> dict[str, float]:
    """``(samples, loss, metric)`` per device → sample-weighted ``federated_loss`` and
    ``federated_metric`` with ``federated_samples`` and ``federated_devices``."""
    usable = [r for r in reports if r[0] > 0]
    total = sum(r[0] for r in usable)
    if total <= 0:
        return {"federated_samples": 0.0, "federated_devices": 0.0}
    return {
        "federated_loss": sum(n * loss for n, loss, _ in usable) / total,
        "federated_metric": sum(n * metric for n, _, metric in usable) / total,
        "federated_samples": float(total),
        "federated_devices": float(len(usable)),
    }


@dataclass
class FederatedEvaluation:
    every: int
    """Evaluate versions divisible by this (0: never)."""
    devices: int
    quantile: float = 0.99
    """Of the score histograms: the anomaly threshold's quantile (``[anomaly]``)."""
    min_samples: int = 500
    _asked: dict[int, set[str]] = field(default_factory=dict, init=False, repr=False)
    _tasks: dict[tuple[str, str], int] = field(default_factory=dict, init=False, repr=False)
    _reports: dict[int, dict[str, _Report]] = field(default_factory=dict, init=False,
                                                    repr=False)

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def wants(self, device_id: str, version: int) -> bool:
        """Should this asking device evaluate ``version`` (the published one) now?"""
        if not self.enabled or version % self.every != 0:
            return False
        asked = self._asked.get(version, set())
        return device_id not in asked and len(asked) < self.devices

    def on_task(self, device_id: str, task_id: str, version: int) -> None:
        self._asked.setdefault(version, set()).add(device_id)
        self._tasks[(device_id, task_id)] = version
        # only the latest few versions matter: forget older bookkeeping
        for old in [v for v in self._asked if v < version - 4 * max(self.every, 1)]:
            del self._asked[old]
            self._reports.pop(old, None)
        for key in [k for k, v in self._tasks.items() if v < version - 4 * max(self.every, 1)]:
            del self._tasks[key]

    def on_report(self, device_id: str, report: EvalReport) -> tuple[int, dict[str, float]] | None:
        """Fold in a report; returns ``(version, combined metrics)`` to record, or None when
        the report answers no task of ours."""
        if self._tasks.pop((device_id, report.task_id), None) is None:
            return None
        version = report.model_version
        per_version = self._reports.setdefault(version, {})
        per_version[device_id] = _Report(report.num_samples, report.loss, report.metric,
                                         report.score_hist)
        combined = combine_reports([(r.samples, r.loss, r.metric) for r in per_version.values()])
        combined.update(agreed_threshold([(r.samples, r.hist) for r in per_version.values()],
                                         self.quantile, self.min_samples))
        return version, combined
