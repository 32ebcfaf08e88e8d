"""Property tests of the config loader: whatever a file holds, the answer is a Config or one
ConfigError line naming a declared key, never another exception.

The values are drawn per declared key: anything TOML can hold (wrong types, NaN, tables,
arrays, dates), the key's own choices and numbers at and around the usual bounds.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.config import SCHEMA, Config, ConfigError, parse_config
from orchestrator.config._fields import Key, shown

BASE_DIR = Path("/srv/fedmq")
MINIMAL: dict[str, dict[str, Any]] = {
    "federation": {"id": "fed"},
    "model": {"kind": "softmax", "n_features": 4, "n_classes": 3},
}
ALL_KEYS = [key for keys in SCHEMA.values() for key in keys.values()]
_NAMED = re.compile(r"(\w+)\.(\w+): \S")

_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=70),
    st.datetimes(),
    st.dates(),
)
_any_toml = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=6,
)
_edges = st.sampled_from([-1, 0, 1, 2, 3, 15, 16, 100, 101, 1023, 1024, 2047, 2048, 65535,
                          65536, -1.0, -0.3, 0.0, 1e-9, 0.001, 0.25, 0.5, 0.99, 1.0, 1.5, 99.9,
                          100.0, 100.5, math.nan, math.inf, -math.inf])
_texts = st.sampled_from(["", "x", "fed-1", "a/b", "127.0.0.1", "localhost", "0.0.0.0",
                          "data", "~/fedmq", "/abs/dir", "../up", "mlp", "tanh", "digits"])


def _values(key: Key) -> st.SearchStrategy[Any]:
    """Values for one key: mostly plausible ones, often anything at all."""
    plausible: list[st.SearchStrategy[Any]] = [_edges, _texts, st.booleans()]
    if key.choices:
        plausible.append(st.sampled_from(key.choices))
    if key.type == "int_list":
        plausible.append(st.lists(st.integers(min_value=-2, max_value=64), max_size=3))
    if key.type == "float_list":
        plausible.append(st.lists(_edges, max_size=3))
    return st.one_of(*plausible, _any_toml)


def _fits(value: Any, type_name: str) -> bool:
    """Whether a value is of the declared type, by the TOML meaning of each type name."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return {
        "str": isinstance(value, str),
        "path": isinstance(value, str) and value != "",
        "bool": isinstance(value, bool),
        "int": number and isinstance(value, int),
        "float": number and math.isfinite(value),
        "int_list": isinstance(value, list) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in value),
        "float_list": isinstance(value, list) and all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            for x in value),
    }[type_name]


def _expected(value: Any, key: Key) -> Any:
    """What the section holds for a value that passed (a path: as the loader anchors it)."""
    if key.type == "float":
        return float(value)
    if key.type == "int_list":
        return tuple(value)
    if key.type == "float_list":
        return tuple(float(x) for x in value)
    return key.read(value, BASE_DIR) if key.type == "path" else value


def _holds(config: Config, key: Key, value: Any) -> bool:
    """Whether a config that took the value holds it, and the declaration allows it."""
    allowed = (not key.choices or value in key.choices) and all(
        bound.holds(value) for bound in key.bounds)
    held, expected = _as_set(config, key), _expected(value, key)
    return allowed and type(held) is type(expected) and held == expected


def _document(values: dict[Key, Any]) -> dict[str, dict[str, Any]]:
    data = {name: dict(table) for name, table in MINIMAL.items()}
    for key, value in values.items():
        data.setdefault(key.section, {})[key.name] = value
    return data


def _parse(data: dict[str, dict[str, Any]]) -> Config | str:
    """The Config, or the text of the one ConfigError (any other exception fails the test)."""
    try:
        return parse_config(data, base_dir=BASE_DIR)
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text and text.strip() == text, repr(text)
        named = _NAMED.match(text)
        assert named is not None and named[2] in SCHEMA.get(named[1], {}), text
        return text


def _as_set(config: Config, key: Key) -> Any:
    if key.section == "model":
        spec = config.model.spec
        return getattr(config.model if spec is None or key.name == "graphs_dir" else spec,
                       key.name)
    return getattr(getattr(config, key.section), key.name)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_value_of_any_key(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(ALL_KEYS), label="key")
    value = data.draw(_values(key), label="value")
    outcome = _parse(_document({key: value}))
    if not _fits(value, key.type):
        assert outcome == f"{key.where}: {key.problem(value)}"
        assert isinstance(outcome, str) and outcome.startswith(f"{key.where}: expected ")
    elif isinstance(outcome, Config):
        assert _holds(outcome, key, value)
    elif key.problem(value) is not None:  # well-typed but out of bounds
        assert outcome == f"{key.where}: {key.problem(value)}"
        assert outcome.endswith(f", got {value!r}")


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_many_keys_at_once(data: st.DataObject) -> None:
    chosen = data.draw(st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=12,
                                unique_by=lambda k: k.where), label="keys")
    values = {key: data.draw(_values(key), label=key.where) for key in chosen}
    outcome = _parse(_document(values))
    if isinstance(outcome, Config):
        for key, value in values.items():
            assert _holds(outcome, key, value)
    else:
        # the first bad key in file order is the one named, if any key is bad on its own
        bad = [k for k in ALL_KEYS if k in values and k.problem(values[k]) is not None]
        if bad:
            assert outcome == f"{bad[0].where}: {bad[0].problem(values[bad[0]])}"


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=12), _any_toml, max_size=4),
       st.sampled_from([*SCHEMA, "surprise"]))
def test_unknown_keys_and_tables_are_named(table: dict[str, Any], section: str) -> None:
    data = _document({})
    data[section] = {**data.get(section, {}), **table}
    try:
        parse_config(data, base_dir=BASE_DIR)
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text
        unknown = [name for name in table if name not in SCHEMA.get(section, {})]
        if section not in SCHEMA:
            assert text.startswith("[surprise]: unknown section (known: federation, broker,")
        elif unknown:  # a name that is not printable shows as its repr ('\n')
            assert text.startswith(f"{section}.{shown(unknown[0])}: unknown key (known: ")
