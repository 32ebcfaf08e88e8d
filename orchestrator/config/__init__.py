"""The orchestrator's TOML configuration, declared once and validated on load.

``load_config(path)`` reads a file into frozen dataclasses. Each key is one field of a section
dataclass in :mod:`.sections`, giving its type (a ``Literal`` for an enumeration), default,
bounds and a one-line doc; :mod:`._fields` derives the checks from it. An unknown section or
key, a wrong type or an impossible value raises :class:`ConfigError` with one line naming the
key, e.g. ``aggregation.k: must be > 0, got 0``. Relative paths are relative to the config
file. ``examples/orchestrator.toml`` shows every key with its default.
"""

from ._fields import ConfigError, Key
from .load import SCHEMA, load_config, parse_config
from .sections import (
    DEFAULT_BROKER_PORT,
    SECTIONS,
    AggregationConfig,
    AnomalyConfig,
    BrokerConfig,
    Config,
    EvaluationConfig,
    FederationConfig,
    IngestConfig,
    LimitsConfig,
    MetricsConfig,
    ModelConfig,
    OpsConfig,
    PrivacyConfig,
    RobustnessConfig,
    SecureAggregationConfig,
    SelectionConfig,
    StandardizeConfig,
    StoppingConfig,
    TrainingConfig,
)

__all__ = [
    "DEFAULT_BROKER_PORT",
    "SCHEMA",
    "SECTIONS",
    "AggregationConfig",
    "AnomalyConfig",
    "BrokerConfig",
    "Config",
    "ConfigError",
    "EvaluationConfig",
    "FederationConfig",
    "IngestConfig",
    "Key",
    "LimitsConfig",
    "MetricsConfig",
    "ModelConfig",
    "OpsConfig",
    "PrivacyConfig",
    "RobustnessConfig",
    "SecureAggregationConfig",
    "SelectionConfig",
    "StandardizeConfig",
    "StoppingConfig",
    "TrainingConfig",
    "load_config",
    "parse_config",
]
