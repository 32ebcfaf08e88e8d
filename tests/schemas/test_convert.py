"""The fast path for flat dataclasses (EncodedTensor) accepts exactly what the generic walk
accepts, builds equal objects, and leaves every error to the generic walk (same paths)."""

from __future__ import annotations

from typing import Any

import pytest

from schemas import _convert
from schemas.errors import ValidationError
from schemas.limits import DEFAULT_LIMITS
from schemas.messages import Update
from schemas.tensors import CodecSpec, EncodedTensor

GOOD: dict[str, Any] = {"name": "w", "shape": [2, 3], "codec": "int8", "data": b"\x01" * 6,
                        "scales": b"\0\0\x80?", "chunk": 0}


def _generic(value: Any, tp: type, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setattr(_convert, "_flat_plan", lambda cls: None)
        return _convert.from_wire(tp, value, DEFAULT_LIMITS)


def test_flat_dataclasses_have_a_plan_and_nested_ones_do_not() -> None:
    assert _convert._flat_plan(EncodedTensor) is not None
    assert _convert._flat_plan(CodecSpec) is None  # a float field: generic walk
    assert _convert._flat_plan(Update) is None


@pytest.mark.parametrize("change", [
    {}, {"extra": 1}, {"scales": None}, {"chunk": True}, {"chunk": 2**63}, {"chunk": -1},
    {"shape": [2, True]}, {"shape": (2, 3)}, {"shape": [2, -3]}, {"shape": [2**64]},
    {"codec": "int9"}, {"codec": ["int8"]}, {"name": 5}, {"name": "x" * 10_000},
    {"data": "text"}, {"shape": list(range(100_000))},
])
def test_fast_and_generic_agree(change: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    value = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    try:
        expected: Any = _generic(value, EncodedTensor, monkeypatch)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as got:
            _convert.from_wire(EncodedTensor, value, DEFAULT_LIMITS)
        assert (got.value.path, str(got.value)) == (exc.path, str(exc))
        return
    assert _convert.from_wire(EncodedTensor, value, DEFAULT_LIMITS) == expected


def test_a_missing_required_field_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    value = {k: v for k, v in GOOD.items() if k != "data"}
    with pytest.raises(ValidationError, match="missing field 'data'"):
        _convert.from_wire(EncodedTensor, value, DEFAULT_LIMITS)
    nested = {"task_id": "t", "base_version": 0, "num_samples": 1, "codec": "int8",
              "tensors": [GOOD, {**GOOD, "shape": [2, "3"]}]}
    with pytest.raises(ValidationError) as got:
        _convert.from_wire(Update, nested, DEFAULT_LIMITS)
    assert got.value.path == "$.tensors[1].shape[1]"
