"""The config's one declaration: sound in itself, in step with the code that consumes its
enumerations, and shown as it is by ``examples/orchestrator.toml`` and docs/operations.md."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, get_args, get_type_hints

import pytest

from orchestrator.aggregation.optimizers import _BY_NAME as OPTIMIZERS
from orchestrator.aggregation.staleness import _BY_NAME as STALENESS
from orchestrator.aggregation.strategy import ReducerName
from orchestrator.config import (
    SCHEMA,
    SECTIONS,
    Config,
    ConfigError,
    MetricsConfig,
    OpsConfig,
    PrivacyConfig,
    RobustnessConfig,
    parse_config,
)
from orchestrator.config._fields import REQUIRED, Key, gt, keys_of
from orchestrator.config.sections import (
    AccountantName,
    CodecName,
    DeviceOptimizerName,
    PrivacyMode,
    SamplingName,
    ThermalName,
)
from orchestrator.errors import OrchestratorError
from orchestrator.privacy.policy import AccountantKind, DpMode, Sampling
from schemas.messages import Optimizer, Thermal
from schemas.tensors import Codec
from tests.support.paths import REPO

EXAMPLE = REPO / "examples" / "orchestrator.toml"
OPERATIONS = REPO / "docs" / "operations.md"
MINIMAL: dict[str, Any] = {"federation": {"id": "fed"},
                           "model": {"kind": "softmax", "n_features": 4, "n_classes": 3}}
ALL_KEYS = [key for keys in SCHEMA.values() for key in keys.values()]


def _as_toml(value: Any) -> Any:
    """A section's value as the file would give it."""
    return str(value) if isinstance(value, Path) else list(value) if isinstance(
        value, tuple) else value


# -- the declaration itself ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ALL_KEYS, ids=lambda k: k.where)
def test_every_key_has_a_one_line_doc_and_a_default_it_accepts(key: Key) -> None:
    assert key.doc.strip() and "\n" not in key.doc
    if key.default not in (REQUIRED, None):
        assert key.problem(_as_toml(key.default)) is None


def test_the_sections_with_defaults_build_without_a_file(tmp_path: Path) -> None:
    loaded = parse_config(MINIMAL, base_dir=tmp_path)
    assert PrivacyConfig() == loaded.privacy and not PrivacyConfig().enabled
    assert RobustnessConfig() == loaded.robustness
    assert MetricsConfig() == loaded.metrics
    assert OpsConfig() == loaded.ops
    # every other section's defaults are its declared ones, as the loader fills them in
    for name, cls in SECTIONS.items():
        section = getattr(loaded, name)
        for f in fields(cls):
            key = SCHEMA[name][f.name]
            if hasattr(section, f.name) and key.default is not REQUIRED and not key.derived:
                assert getattr(section, f.name) == key.absent(tmp_path), key.where


def test_the_enumerations_are_the_consumers_own() -> None:
    def choices(section: str, key: str) -> tuple[str, ...]:
        return SCHEMA[section][key].choices

    assert get_args(CodecName) == tuple(c.value for c in Codec)
    assert choices("training", "codec") == choices("selection", "slow_codec") == get_args(
        CodecName)
    assert get_args(ThermalName) == tuple(t.value for t in Thermal)
    assert choices("training", "optimizer") == get_args(DeviceOptimizerName) == tuple(
        o.value for o in Optimizer)
    assert choices("aggregation", "reducer") == get_args(ReducerName)
    assert get_args(PrivacyMode) == ("off", *get_args(DpMode))
    assert get_args(AccountantName) == get_args(AccountantKind)
    assert get_args(SamplingName) == get_args(Sampling)
    assert set(choices("aggregation", "staleness")) == set(STALENESS)
    assert set(choices("aggregation", "server_optimizer")) <= set(OPTIMIZERS)


def test_config_error_is_the_packages_error_and_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(OrchestratorError) as caught:
        parse_config({"surprise": {}}, base_dir=tmp_path)
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)


def test_a_declaration_the_loader_cannot_honour_fails_at_once() -> None:
    @dataclass(frozen=True)
    class NoDoc:
        k: Annotated[int, gt(0)] = 1

    @dataclass(frozen=True)
    class OptionalWithValue:
        k: Annotated[int | None, "an optional key"] = 3

    @dataclass(frozen=True)
    class NoTomlForm:
        k: Annotated[dict[str, int], "a table"]

    for cls, complaint in ((NoDoc, "exactly one doc"), (OptionalWithValue, "defaults to None"),
                           (NoTomlForm, "no TOML form")):
        with pytest.raises(TypeError, match=complaint):
            keys_of("s", cls)


def test_config_holds_every_section() -> None:
    hints = get_type_hints(Config)
    assert set(SECTIONS) <= set(hints)


# -- examples/orchestrator.toml ------------------------------------------------------------------

_TABLE = re.compile(r"\[(\w+)\]")
_KEY = re.compile(r"(# ?)?(\w+) = ")


@dataclass(frozen=True)
class Shown:
    """One key as the example shows it: set, or commented out (``# clip_norm = 1.0``)."""

    where: str
    value: Any
    commented: bool
    line: str


def _shown() -> list[Shown]:
    out: list[Shown] = []
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if table := _TABLE.match(line):
            section = table[1]
        elif m := _KEY.match(line):
            text = line[len(m[1] or ""):]  # a commented-out key reads as one uncommented
            out.append(Shown(f"{section}.{m[2]}", tomllib.loads(text)[m[2]], m[1] is not None,
                             line))
    return out


def test_the_example_shows_every_declared_key_once() -> None:
    shown = [s.where for s in _shown()]
    declared = [key.where for key in ALL_KEYS]
    missing, unknown = set(declared) - set(shown), set(shown) - set(declared)
    assert not missing, f"not in the example: {sorted(missing)}"
    assert not unknown, f"not declared: {sorted(unknown)}"
    assert shown == declared  # once each, in declaration order


@pytest.mark.parametrize("shown", _shown(), ids=lambda s: s.where)
def test_the_example_shows_defaults_and_valid_examples(shown: Shown, tmp_path: Path) -> None:
    section, _, name = shown.where.partition(".")
    assert name in SCHEMA.get(section, {}), f"{shown.where} is not declared"
    key = SCHEMA[section][name]
    assert key.problem(shown.value) is None, shown.line
    if shown.commented:
        # left out, the key is unset: only an optional (or derived) key may be shown so
        assert key.default is None, f"{key.where} has a default: show it set"
    elif key.default is not REQUIRED and "example" not in shown.line.partition("#")[2]:
        assert key.read(shown.value, tmp_path) == key.absent(tmp_path), (
            f"{shown.line!r}: the default is {_as_toml(key.default)!r} (or mark it 'example')")


# -- docs/operations.md --------------------------------------------------------------------------


def _configuration_section() -> str:
    text = OPERATIONS.read_text()
    start = text.index("## Configuration\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_the_operations_guide_names_declared_keys_and_real_messages(tmp_path: Path) -> None:
    section = _configuration_section()
    settings = re.findall(r"`(?:\[(\w+)\] )?(\w+) = ([^`]+)`", section)
    messages = re.findall(r"`(\w+)\.(\w+): ([^`]*), got ([^`]+)`", section)
    assert settings and messages
    for table, name, value in settings:
        found = [k for k in ALL_KEYS if k.name == name and table in ("", k.section)]
        assert len(found) == 1, f"`{name}` names {len(found)} declared keys"
        assert found[0].problem(tomllib.loads(f"v = {value}")["v"]) is None
    for table, name, problem, value in messages:
        data = {**MINIMAL, table: {**MINIMAL.get(table, {}),
                                   name: tomllib.loads(f"v = {value}")["v"]}}
        with pytest.raises(ConfigError) as caught:
            parse_config(data, base_dir=tmp_path)
        assert str(caught.value) == f"{table}.{name}: {problem}, got {value}"
