"""The stopping rules (target, plateau, max versions, wall clock) and their saved state."""

from __future__ import annotations

from orchestrator.config import StoppingConfig
from orchestrator.convergence.stopping import StoppingRules, StoppingState


def _rules(**kw: object) -> StoppingRules:
    cfg = StoppingConfig(**{"target_metric": None, "higher_is_better": True, "patience": None,  # type: ignore[arg-type]
                            "min_delta": 0.0, "max_versions": None, "max_wall_s": None, **kw})
    return StoppingRules(cfg, StoppingState(started_ms=0))


def test_stopping_rules() -> None:
    assert _rules(target_metric=0.9).on_version(1, 0.95).startswith("target_metric")
    assert _rules(target_metric=0.9).on_version(1, 0.5) is None
    lower = _rules(target_metric=0.1, higher_is_better=False)
    assert lower.on_version(1, 0.2) is None and lower.on_version(2, 0.05) is not None
    plateau = _rules(patience=2, min_delta=0.01)
    assert [plateau.on_version(v, m) for v, m in ((1, 0.5), (2, 0.505), (3, 0.6), (4, 0.6))] \
        == [None, None, None, None]
    assert plateau.on_version(5, 0.59) is not None
    assert _rules(max_versions=3).on_version(3, None).startswith("max_versions")
    wall = _rules(max_wall_s=2.0)
    assert wall.on_clock(1999) is None and wall.on_clock(2000) is not None
    state = StoppingState(5, 0.7, 3, 2)
    assert StoppingState.from_bytes(state.to_bytes()) == state
