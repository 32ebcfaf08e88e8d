"""Reading a config file: each table checked against its declaration, then the rules that
relate keys of different sections (a quorum within the concurrency, DP only where it is
calibrated, a model given one way)."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from orchestrator.models import ModelSpec

from ._fields import ConfigError, Key, keys_of, read_section, shown
from .sections import (
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

__all__ = ["SCHEMA", "load_config", "parse_config"]

SCHEMA: Final[Mapping[str, Mapping[str, Key]]] = {
    name: keys_of(name, cls) for name, cls in SECTIONS.items()
}
"""Every key of every table, read from :data:`~.sections.SECTIONS` (file order)."""

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, base_dir=p.resolve().parent, source=p)


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path | None = None, source: Path | None = None
) -> Config:
    """Validate a parsed TOML document (``base_dir`` anchors relative paths)."""
    base = (base_dir if base_dir is not None else Path.cwd()).resolve()
    for section, value in data.items():
        if section not in SCHEMA:
            raise ConfigError(f"[{shown(section)}]: unknown section "
                              f"(known: {', '.join(SCHEMA)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{section}: must be a table ([{section}])")
    if "federation" not in data:
        raise ConfigError("federation.id: required")
    v = {name: read_section(name, keys, data.get(name, {}), base)
         for name, keys in SCHEMA.items()}
    return _assemble(v, source)


def _assemble(v: dict[str, dict[str, Any]], source: Path | None) -> Config:
    broker = _broker(v["broker"])
    model = _model(v["model"])
    training = TrainingConfig(**v["training"])
    agg = _aggregation(v["aggregation"])
    selection = _selection(v["selection"], agg)
    evaluation = EvaluationConfig(**v["evaluation"])
    stopping = StoppingConfig(**v["stopping"])
    if stopping.target_metric is not None and evaluation.dataset is None:
        raise ConfigError("stopping.target_metric: needs evaluation.dataset to measure it")
    if stopping.patience is not None and evaluation.dataset is None:
        raise ConfigError("stopping.patience: needs evaluation.dataset to measure a plateau")
    ingest = IngestConfig(**v["ingest"])
    privacy = _privacy(v["privacy"], training, agg)
    return Config(FederationConfig(**v["federation"]), broker, model, training, agg, selection,
                  ingest, evaluation, stopping, source,
                  privacy=privacy,
                  robustness=RobustnessConfig(**v["robustness"]),
                  anomaly=AnomalyConfig(**v["anomaly"]),
                  standardize=StandardizeConfig(**v["standardize"]),
                  secure_aggregation=_secure_aggregation(v["secure_aggregation"], agg,
                                                         selection, privacy),
                  metrics=MetricsConfig(**v["metrics"]), ops=OpsConfig(**v["ops"]),
                  limits=_limits(v["limits"], ingest))


def _secure_aggregation(s: dict[str, Any], agg: AggregationConfig, selection: SelectionConfig,
                        privacy: PrivacyConfig) -> SecureAggregationConfig:
    secure = SecureAggregationConfig(**s)
    if privacy.mode == "distributed" and not secure.enabled:
        raise ConfigError("privacy.mode: \"distributed\" needs secure_aggregation.enabled "
                          "(the bucket members add the noise)")
    if not secure.enabled:
        return secure
    if agg.mode != "async":
        raise ConfigError("secure_aggregation.enabled: needs aggregation.mode = \"async\" "
                          "(buckets enter FedBuff)")
    if secure.bucket_size > selection.concurrency:
        raise ConfigError(f"secure_aggregation.bucket_size: {secure.bucket_size} members need "
                          f"selection.concurrency >= {secure.bucket_size} (it is "
                          f"{selection.concurrency})")
    return secure


def _broker(b: dict[str, Any]) -> BrokerConfig:
    broker = BrokerConfig(**b)
    if not broker.embedded and broker.password is None:
        raise ConfigError("broker.password: required when broker.embedded = false")
    if broker.ca_file is not None and not broker.tls:
        raise ConfigError("broker.ca_file: set broker.tls = true to use a CA file")
    _client_certificates(broker)
    if broker.embedded and broker.host not in _LOOPBACK:
        raise ConfigError(f"broker.host: an embedded broker listens on loopback only, "
                          f"got {broker.host!r}")
    return broker


def _limits(raw: dict[str, Any], ingest: IngestConfig) -> LimitsConfig:
    limits = LimitsConfig(**raw)
    if limits.bytes_burst < ingest.max_update_bytes:
        # a legitimate update of the largest accepted size must fit the bucket
        raise ConfigError(f"limits.bytes_burst: must be >= ingest.max_update_bytes "
                          f"({ingest.max_update_bytes}), got {limits.bytes_burst}")
    return limits


def _client_certificates(broker: BrokerConfig) -> None:
    if not broker.client_certificates:
        for key in ("ca_key_file", "cert_file", "key_file"):
            if getattr(broker, key) is not None:
                raise ConfigError(f"broker.{key}: set broker.client_certificates = true to "
                                  "use it")
        return
    if not broker.tls or broker.embedded:
        raise ConfigError("broker.client_certificates: needs broker.tls = true and an "
                          "external broker (embedded = false)")
    if broker.ca_file is None:
        raise ConfigError("broker.client_certificates: needs broker.ca_file (the CA that "
                          "signs the client certificates)")
    if broker.ca_key_file is None:
        raise ConfigError("broker.client_certificates: needs broker.ca_key_file (the CA key "
                          "that signs the devices' certificates)")
    if (broker.cert_file is None) != (broker.key_file is None):
        raise ConfigError("broker.cert_file: give broker.key_file with it (or neither)")


def _aggregation(a: dict[str, Any]) -> AggregationConfig:
    agg = AggregationConfig(**a)
    if agg.max_per_version is not None and agg.max_per_version < agg.k:
        raise ConfigError(f"aggregation.max_per_version: must be >= aggregation.k ({agg.k}), "
                          f"got {agg.max_per_version}")
    if agg.reducer != "mean" and agg.mode == "sync":
        raise ConfigError("aggregation.reducer: sync mode aggregates with plain FedAvg (mean)")
    if agg.staleness == "polynomial" and agg.a is not None and not 0 < agg.a <= 1:
        # the staleness alpha of (1+s)^-a: 0 would be "constant" in disguise, > 1 starves
        # every update that is even one version behind
        raise ConfigError(f"aggregation.a: the polynomial staleness alpha must be in (0, 1], "
                          f"got {agg.a!r}")
    return agg


def _selection(s: dict[str, Any], agg: AggregationConfig) -> SelectionConfig:
    if s["concurrency"] is None:
        s = {**s, "concurrency": max(1, math.ceil(agg.k * s["overcommit"]))}
    selection = SelectionConfig(**s)
    if agg.quorum is not None and agg.quorum > selection.concurrency:
        raise ConfigError(f"aggregation.quorum: must be <= selection.concurrency "
                          f"({selection.concurrency}), got {agg.quorum}")
    return selection


def _privacy(p: dict[str, Any], training: TrainingConfig, agg: AggregationConfig
             ) -> PrivacyConfig:
    privacy = PrivacyConfig(**p)
    if not privacy.enabled:
        return privacy
    if training.clip_norm is not None or training.noise_multiplier > 0:
        raise ConfigError("training.clip_norm: with privacy.mode set, give the clip norm and "
                          "noise multiplier in [privacy] only")
    if privacy.mode == "server" and (agg.mode != "async" or agg.reducer != "mean"):
        # the noise is calibrated to a weighted mean's sensitivity, added between FedBuff's
        # reduction and the server optimizer
        raise ConfigError("privacy.mode: 'server' needs aggregation.mode = \"async\" and "
                          "aggregation.reducer = \"mean\"")
    return privacy


def _model(m: dict[str, Any]) -> ModelConfig:
    graphs_dir = m["graphs_dir"]
    spec_keys = [k for k in ("kind", "n_features") if m[k] is not None]
    if graphs_dir is not None:
        if spec_keys:
            raise ConfigError(f"model.{spec_keys[0]}: give either model.graphs_dir or a "
                              "built-in model (kind, n_features...), not both")
        return ModelConfig(spec=None, graphs_dir=graphs_dir)
    for key in ("kind", "n_features"):
        if m[key] is None:
            raise ConfigError(f"model.{key}: required (or give model.graphs_dir)")
    try:
        spec = ModelSpec(kind=m["kind"], n_features=m["n_features"], n_classes=m["n_classes"],
                         hidden=m["hidden"], activation=m["activation"], seed=m["seed"])
    except ValueError as exc:
        # ModelSpec's messages start with the field name ("n_classes: ...")
        raise ConfigError(f"model.{exc}") from None
    return ModelConfig(spec=spec, graphs_dir=None)
