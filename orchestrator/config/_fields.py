"""How a configuration key is declared, and how one TOML value is checked against it.

A section is a frozen dataclass and each of its fields is one key::

    k: Annotated[int, gt(0), "async: updates per new version"] = 10

The type says what the file may hold (``int``, ``float``, ``bool``, ``str``, a ``Literal`` of
strings, ``Path``, ``tuple[int, ...]``, ``tuple[float, ...]``; ``X | None`` for an optional
key), the ``Annotated`` metadata holds the bounds (:class:`Bound`) and exactly one string, the
key's one-line doc, and the dataclass default is the key's default. A field without a default
is required, unless its metadata holds :data:`DERIVED` (the loader computes it when the file
leaves it out).
:func:`keys_of` reads a section into one :class:`Key` per field; everything the loader checks,
converts and says about a key comes from there.
"""

from __future__ import annotations

import math
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin, get_type_hints

from orchestrator.errors import OrchestratorError
from schemas.topics import valid_id

__all__ = [
    "ANY_PORT",
    "BETAS",
    "DERIVED",
    "FED_ID",
    "NOT_EMPTY",
    "POSITIVE_ITEMS",
    "REQUIRED",
    "TCP_PORT",
    "Bound",
    "ConfigError",
    "Key",
    "ge",
    "gt",
    "keys_of",
    "read_section",
    "shown",
    "within",
]


class ConfigError(OrchestratorError, ValueError):
    """The configuration is unusable; the message is one line naming the key."""


# -- bounds --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """A check on a well-typed value: the key is refused with ``text`` unless ``holds``."""

    holds: Callable[[Any], bool]
    text: str


def gt(bound: float) -> Bound:
    return Bound(lambda v: v > bound, f"must be > {bound:g}")


def ge(bound: float) -> Bound:
    return Bound(lambda v: v >= bound, f"must be >= {bound:g}")


_INTERVAL = re.compile(r"([\[(])\s*(-?[\d.e-]+)\s*,\s*(-?[\d.e-]+)\s*([\])])")


def within(interval: str) -> Bound:
    """A bound written as an interval, ``"[0, 1)"``: square brackets include the end."""
    m = _INTERVAL.fullmatch(interval)
    if m is None:
        raise TypeError(f"not an interval: {interval!r}")
    lo, hi = float(m[2]), float(m[3])
    lo_open, hi_open = m[1] == "(", m[4] == ")"

    def holds(v: float) -> bool:
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return Bound(holds, f"must be in {m[1]}{lo:g}, {hi:g}{m[4]}")


FED_ID: Final = Bound(valid_id, "must be 1-64 of letters, digits, '_', '.', '-'")
TCP_PORT: Final = Bound(lambda v: 0 < v < 65536, "must be a TCP port (1-65535)")
ANY_PORT: Final = Bound(lambda v: 0 <= v < 65536, "must be a TCP port (0 = any free port)")
NOT_EMPTY: Final = Bound(bool, "must not be empty")
POSITIVE_ITEMS: Final = Bound(lambda v: all(x > 0 for x in v), "must hold positive integers")
BETAS: Final = Bound(lambda v: len(v) == 2 and all(0 <= x < 1 for x in v),
                     "must be two numbers in [0, 1)")


class _Marker:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


DERIVED: Final = _Marker("DERIVED")
"""Field metadata: the file may leave the key out and the loader computes it."""
REQUIRED: Final = _Marker("REQUIRED")
""":attr:`Key.default` of a key the file must give."""


# -- value types ---------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _as_path(value: str | Path, base: Path) -> Path:
    p = Path(os.path.expanduser(value))
    # normpath, not resolve: symlinked data directories stay as the operator named them
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


@dataclass(frozen=True)
class _Kind:
    name: str
    accepts: Callable[[Any], bool]
    expected: str
    convert: Callable[[Any, Path], Any]


_KINDS: dict[object, _Kind] = {
    str: _Kind("str", lambda v: isinstance(v, str), "a string", lambda v, _: v),
    int: _Kind("int", _is_int, "an integer", lambda v, _: v),
    float: _Kind("float", _is_number, "a finite number", lambda v, _: float(v)),
    bool: _Kind("bool", lambda v: isinstance(v, bool), "true or false", lambda v, _: v),
    Path: _Kind("path", lambda v: isinstance(v, str) and bool(v), "a non-empty path string",
                _as_path),
    tuple[int, ...]: _Kind("int_list", lambda v: isinstance(v, list) and all(map(_is_int, v)),
                           "a list of integers", lambda v, _: tuple(v)),
    tuple[float, ...]: _Kind("float_list",
                             lambda v: isinstance(v, list) and all(map(_is_number, v)),
                             "a list of finite numbers", lambda v, _: tuple(map(float, v))),
}
_BY_NAME = {kind.name: kind for kind in _KINDS.values()}


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


# -- keys ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One key as the loader sees it, read from its section's field by :func:`keys_of`."""

    section: str
    name: str
    type: str
    """``str``, ``int``, ``float``, ``bool``, ``path``, ``int_list`` or ``float_list``."""
    default: Any
    """The value when the file leaves the key out: :data:`REQUIRED`, ``None`` (optional and
    unset; also for a derived key) or the default as the section holds it."""
    doc: str
    bounds: tuple[Bound, ...] = ()
    choices: tuple[str, ...] = ()
    """A ``Literal`` key's values, in their declared order."""
    derived: bool = False

    @property
    def where(self) -> str:
        return f"{self.section}.{self.name}"

    def problem(self, value: Any) -> str | None:
        """What is wrong with a value as the file gives it (None: nothing)."""
        kind = _BY_NAME[self.type]
        if not kind.accepts(value):
            return f"expected {kind.expected}, got {_describe(value)}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        for bound in self.bounds:
            if not bound.holds(value):
                return f"{bound.text}, got {value!r}"
        return None

    def read(self, value: Any, base: Path) -> Any:
        """The section's value for a value in the file (paths are relative to ``base``)."""
        problem = self.problem(value)
        if problem is not None:
            raise ConfigError(f"{self.where}: {problem}")
        return _BY_NAME[self.type].convert(value, base)

    def absent(self, base: Path) -> Any:
        """The section's value when the file leaves the key out."""
        if self.default is REQUIRED:
            raise ConfigError(f"{self.where}: required")
        if self.type == "path" and self.default is not None:
            return _as_path(self.default, base)
        return self.default


def keys_of(section: str, cls: type) -> dict[str, Key]:
    """The keys a section dataclass declares, in field order.

    Raises :class:`TypeError` for a declaration the loader could not honour (an unknown type,
    no doc, a default of the wrong kind), so a mistake fails at import, not at a site.
    """
    hints = get_type_hints(cls, include_extras=True)
    return {f.name: _key(section, f.name, hints[f.name], f.default) for f in fields(cls)}


def _key(section: str, name: str, hint: Any, default: Any) -> Key:
    where = f"{section}.{name}"
    tp, *meta = get_args(hint) if get_origin(hint) is Annotated else (hint,)
    docs = [m for m in meta if isinstance(m, str)]
    if len(docs) != 1:
        raise TypeError(f"{where}: declare exactly one doc string, got {len(docs)}")
    optional = get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)
    if optional:
        (tp,) = (a for a in get_args(tp) if a is not type(None))
    choices: tuple[str, ...] = ()
    if get_origin(tp) is Literal:
        choices, tp = get_args(tp), str
        if not all(isinstance(c, str) for c in choices):
            raise TypeError(f"{where}: a Literal key takes strings only")
    kind = _KINDS.get(tp)
    if kind is None:
        raise TypeError(f"{where}: no TOML form for {tp!r}")
    derived = DERIVED in meta
    if default is MISSING:
        default = None if derived else REQUIRED
    elif (default is None) != optional:
        raise TypeError(f"{where}: an optional key defaults to None, and only an optional key")
    return Key(section, name, kind.name, default, docs[0],
               tuple(m for m in meta if isinstance(m, Bound)), choices, derived)


def shown(name: str) -> str:
    """A table or key name from the file as a message shows it: on one line, readable."""
    return name if name.isprintable() else repr(name)


def read_section(section: str, keys: Mapping[str, Key], table: Mapping[str, Any],
                 base: Path) -> dict[str, Any]:
    """Check one table of the file against its keys: each key's value, defaults filled in."""
    for name in table:
        if name not in keys:
            raise ConfigError(f"{section}.{shown(name)}: unknown key "
                              f"(known: {', '.join(keys)})")
    return {name: key.read(table[name], base) if name in table else key.absent(base)
            for name, key in keys.items()}
