"""Staleness weighting functions against their formulas."""

from __future__ import annotations

import pytest

from orchestrator.aggregation import Constant, Hinge, Polynomial, staleness_from_config


def test_constant() -> None:
    assert [Constant()(s) for s in (0, 1, 100)] == [1.0, 1.0, 1.0]


def test_polynomial() -> None:
    assert Polynomial()(3) == pytest.approx(0.5)  # (1 + 3) ** -0.5
    assert [Polynomial(a=1.0)(s) for s in (0, 1, 3)] == pytest.approx([1.0, 0.5, 0.25])
    assert Polynomial(a=0.0)(50) == 1.0


def test_hinge() -> None:
    h = Hinge(a=10.0, b=4)
    assert [h(s) for s in (0, 4)] == [1.0, 1.0]
    assert h(5) == pytest.approx(1 / 11)  # 1 / (10 * (5 - 4) + 1)
    assert h(6) == pytest.approx(1 / 21)


def test_from_config() -> None:
    fn = staleness_from_config("Hinge", a=2.0, b=1)
    assert fn(3) == pytest.approx(0.2)  # 1 / (2 * (3 - 1) + 1)
    assert staleness_from_config("polynomial", a=2.0)(1) == pytest.approx(0.25)
    assert staleness_from_config("constant")(9) == 1.0
    with pytest.raises(ValueError, match="unknown"):
        staleness_from_config("exponential")
    with pytest.raises(ValueError, match="bad parameters"):
        staleness_from_config("polynomial", alpha=1.0)


def test_invalid_values() -> None:
    with pytest.raises(ValueError):
        Polynomial(a=-1.0)
    with pytest.raises(ValueError):
        Hinge(a=float("nan"))
    with pytest.raises(ValueError):
        Constant()(-1)
