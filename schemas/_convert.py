"""Strict conversion between message dataclasses and plain msgpack-able values.

One mechanism for every message: a dataclass's type hints are its schema. Decoding walks the
hints and checks each value's type and bounds, naming the path of the first violation
(``$.tensors[2].shape``) so a rejected message says exactly what was wrong.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, Union

from .errors import ValidationError
from .limits import Limits

_NONE = type(None)
# Every integer field is a signed 64-bit (SQLite INTEGER, the replay window's state).
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@cache
def _fields(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        out.append((f.name, hints[f.name], has_default))
    return tuple(out)


def to_wire(obj: Any) -> Any:
    """Dataclass → nested dicts/lists of msgpack-native values (enums by value)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: to_wire(getattr(obj, name)) for name, _, _ in _fields(type(obj))}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, list | tuple):
        return [to_wire(v) for v in obj]
    if isinstance(obj, dict):
        for k in obj:  # the receiver's msgpack (strict_map_key) refuses any other key
            if not isinstance(k, str | bytes):
                raise TypeError(f"map key {k!r} is not a string")
        return {k: to_wire(v) for k, v in obj.items()}
    return obj


def from_wire(cls: type, value: Any, limits: Limits, path: str = "$") -> Any:
    """Build ``cls`` from a decoded msgpack value, strictly. Unknown keys are ignored (newer
    senders may append fields); missing keys without a default are errors."""
    return _convert(value, cls, limits, path)


def _convert(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    return _converter(tp)(value, tp, limits, path)


_Converter = Callable[[Any, Any, Limits, str], Any]


@cache
def _converter(tp: Any) -> _Converter:
    """The converter for a type hint, chosen once per hint: decoding is a hot path, and the
    choice costs more than most checks."""
    if tp is Any:
        return _convert_any
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _convert_union
    if origin is list or origin is tuple:
        return _convert_array
    if origin is dict:
        return _convert_map
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            return _convert_dataclass
        if issubclass(tp, enum.Enum):
            return _convert_enum
        if tp in _SCALAR_CONVERTERS:
            return _SCALAR_CONVERTERS[tp]
    return _unsupported


def _convert_any(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    return _check_any(value, limits, path, depth=0)


def _convert_union(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    args = typing.get_args(tp)
    if value is None:
        if _NONE in args:
            return None
        raise ValidationError("null not allowed", path=path)
    non_none = [a for a in args if a is not _NONE]
    if len(non_none) == 1:
        return _convert(value, non_none[0], limits, path)
    for arg in non_none:  # first matching alternative
        try:
            return _convert(value, arg, limits, path)
        except ValidationError:
            continue
    raise ValidationError(f"expected one of {non_none}", path=path)


def _convert_array(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    if not isinstance(value, list | tuple):
        raise ValidationError("expected an array", path=path)
    if len(value) > limits.max_list:
        raise ValidationError("array too long", path=path)
    (item_tp, *_rest) = typing.get_args(tp) or (Any,)
    items = [_convert(v, item_tp, limits, f"{path}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if typing.get_origin(tp) is tuple else items


def _convert_map(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    if not isinstance(value, dict):
        raise ValidationError("expected a map", path=path)
    if len(value) > limits.max_list:
        raise ValidationError("map too large", path=path)
    key_tp, val_tp = typing.get_args(tp)
    out = {}
    for k, v in value.items():
        key = _convert(k, key_tp, limits, f"{path}.<key>")
        out[key] = _convert(v, val_tp, limits, f"{path}.{k}")
    return out


def _convert_dataclass(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    plan = _flat_plan(tp)
    if plan is not None and type(value) is dict:
        fast = _convert_flat(value, tp, plan, limits)
        if fast is not None:
            return fast
    if not isinstance(value, dict):
        raise ValidationError(f"expected a map for {tp.__name__}", path=path)
    kwargs = {}
    for name, ftp, has_default in _fields(tp):
        if name in value:
            kwargs[name] = _convert(value[name], ftp, limits, f"{path}.{name}")
        elif not has_default:
            raise ValidationError(f"missing field {name!r}", path=path)
    try:
        return tp(**kwargs)
    except ValidationError:
        raise
    except (ValueError, TypeError) as exc:
        raise ValidationError(str(exc), path=path) from None


def _convert_enum(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    try:
        return tp(value)
    except ValueError:
        raise ValidationError(f"unknown {tp.__name__} {value!r}", path=path) from None


def _convert_bool(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    if not isinstance(value, bool):
        raise ValidationError("expected a boolean", path=path)
    return value


def _convert_int(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError("expected an integer", path=path)
    if not _INT64_MIN <= value <= _INT64_MAX:  # msgpack also carries uint64
        raise ValidationError("integer out of the signed 64-bit range", path=path)
    return value


def _convert_float(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError("expected a number", path=path)
    return float(value)


def _convert_str(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    if not isinstance(value, str):
        raise ValidationError("expected a string", path=path)
    if len(value) > limits.max_string:
        raise ValidationError("string too long", path=path)
    return value


def _convert_bytes(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    if not isinstance(value, bytes):
        raise ValidationError("expected bytes", path=path)
    return value


def _unsupported(value: Any, tp: Any, limits: Limits, path: str) -> Any:
    raise ValidationError(f"unsupported schema type {tp!r}", path=path)  # pragma: no cover


_SCALAR_CONVERTERS: dict[type, _Converter] = {
    bool: _convert_bool, int: _convert_int, float: _convert_float, str: _convert_str,
    bytes: _convert_bytes,
}


# -- fast path for flat dataclasses -------------------------------------------------------------
#
# A dataclass whose fields are all scalars, enums or list[int] (EncodedTensor, the bulk of every
# update) is checked with exact type tests and no per-field path strings: several times faster
# than the generic walk. It only ever accepts what the generic walk accepts; on anything unusual
# it gives up (None) and the generic walk runs, so errors and their paths are unchanged.

_SCALARS = (str, int, bytes, bool)
_Plan = tuple[tuple[str, Any, bool], ...]


@cache
def _flat_plan(cls: type) -> _Plan | None:
    plan = []
    for name, ftp, has_default in _fields(cls):
        if ftp in _SCALARS:
            kind: Any = ftp
        elif isinstance(ftp, type) and issubclass(ftp, enum.Enum):
            kind = ftp
        elif typing.get_origin(ftp) is list and typing.get_args(ftp) == (int,):
            kind = list
        else:
            return None
        plan.append((name, kind, has_default))
    return tuple(plan)


def _convert_flat(value: dict[Any, Any], cls: type, plan: _Plan, limits: Limits) -> Any:
    kwargs: dict[str, Any] = {}
    for name, kind, has_default in plan:
        if name not in value:
            if has_default:
                continue
            return None
        v = value[name]
        if kind is list:
            if type(v) is not list or len(v) > limits.max_list:
                return None
            for d in v:
                if type(d) is not int or not _INT64_MIN <= d <= _INT64_MAX:
                    return None
            v = list(v)
        elif kind is str:
            if type(v) is not str or len(v) > limits.max_string:
                return None
        elif kind is int:
            if type(v) is not int or not _INT64_MIN <= v <= _INT64_MAX:
                return None
        elif kind is bytes or kind is bool:
            if type(v) is not kind:
                return None
        else:  # an enum
            try:
                v = kind(v)
            except Exception:  # the generic walk reports it
                return None
        kwargs[name] = v
    try:
        return cls(**kwargs)
    except Exception:  # e.g. __post_init__ refuses: the generic walk reports it
        return None


def _check_any(value: Any, limits: Limits, path: str, depth: int) -> Any:
    """Free-form values (operator args, metrics) are limited to plain msgpack data."""
    if depth > 16:
        raise ValidationError("nesting too deep", path=path)
    if value is None or isinstance(value, bool | int | float | bytes):
        return value
    if isinstance(value, str):
        if len(value) > limits.max_string:
            raise ValidationError("string too long", path=path)
        return value
    if isinstance(value, list | tuple):
        if len(value) > limits.max_list:
            raise ValidationError("array too long", path=path)
        return [_check_any(v, limits, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if len(value) > limits.max_list:
            raise ValidationError("map too large", path=path)
        return {
            _check_any(k, limits, f"{path}.<key>", depth + 1):
            _check_any(v, limits, f"{path}.{k}", depth + 1)
            for k, v in value.items()
        }
    raise ValidationError(f"unsupported value of type {type(value).__name__}", path=path)
