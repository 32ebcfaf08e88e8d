"""Stopping rules: target metric, plateau patience, max versions, max wall time (pure).

The service feeds each evaluated version and the clock; the first rule that fires gives the
reason, which the service records (server state + audit) before publishing the model with
``stopped=True`` and ceasing to hand out tasks.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from orchestrator.config import StoppingConfig

__all__ = ["StoppingRules", "StoppingState"]


@dataclass
class StoppingState:
    started_ms: int
    best_metric: float | None = None
    best_version: int | None = None
    since_best: int = 0
    """Evaluated versions since the last improvement by more than ``min_delta``."""
    base_version: int = 0
    """``max_versions`` counts from here (the version a resume started from)."""

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> StoppingState:
        raw = json.loads(data)
        return cls(int(raw["started_ms"]), raw.get("best_metric"), raw.get("best_version"),
                   int(raw.get("since_best", 0)), int(raw.get("base_version", 0)))


class StoppingRules:
    def __init__(self, cfg: StoppingConfig, state: StoppingState) -> None:
        self._cfg = cfg
        self.state = state

    def on_version(self, version: int, metric: float | None) -> str | None:
        """After version ``version`` was made (and evaluated, if ``metric`` is not None)."""
        cfg, st = self._cfg, self.state
        if metric is not None:
            sign = 1.0 if cfg.higher_is_better else -1.0
            if st.best_metric is None or sign * (metric - st.best_metric) > cfg.min_delta:
                st.best_metric, st.best_version, st.since_best = metric, version, 0
            else:
                st.since_best += 1
            if cfg.target_metric is not None and sign * (metric - cfg.target_metric) >= 0:
                return f"target_metric: {metric:.4g} reached {cfg.target_metric:g} at v{version}"
            if cfg.patience is not None and st.since_best >= cfg.patience:
                return (f"patience: no improvement above {cfg.min_delta:g} for "
                        f"{st.since_best} versions (best {st.best_metric:.4g} at "
                        f"v{st.best_version})")
        if cfg.max_versions is not None and version - st.base_version >= cfg.max_versions:
            return f"max_versions: reached version {version}"
        return None

    def on_clock(self, now_ms: int) -> str | None:
        limit = self._cfg.max_wall_s
        if limit is not None and now_ms - self.state.started_ms >= limit * 1000:
            return f"max_wall_s: {limit:g} s elapsed"
        return None
