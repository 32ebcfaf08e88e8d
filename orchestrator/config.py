"""The orchestrator's TOML configuration: one schema table, validated on load.

``load_config(path)`` reads a file into frozen dataclasses. Every key of every section is
declared once in ``SCHEMA`` (type, default, check); an unknown section or key, a wrong type or
an impossible value raises :class:`ConfigError` with one line naming the key, e.g.
``aggregation.k: must be > 0, got 0``. Relative paths are relative to the config file.

See ``examples/orchestrator.toml`` for every key with its default.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.models import ModelSpec
from schemas.tensors import Codec, CodecSpec
from schemas.topics import valid_id

__all__ = [
    "DEFAULT_BROKER_PORT",
    "SCHEMA",
    "AggregationConfig",
    "BrokerConfig",
    "Config",
    "ConfigError",
    "EvaluationConfig",
    "FederationConfig",
    "IngestConfig",
    "MetricsConfig",
    "ModelConfig",
    "OpsConfig",
    "PrivacyConfig",
    "RobustnessConfig",
    "SelectionConfig",
    "StoppingConfig",
    "TrainingConfig",
    "load_config",
    "parse_config",
]

DEFAULT_BROKER_PORT = 18830
MiB = 1024 * 1024


class ConfigError(ValueError):
    """The configuration is unusable; the message is one line naming the key."""


# -- value checks -------------------------------------------------------------------------------
# A check returns None when the value is fine, otherwise what is wrong ("must be > 0").

Check = Callable[[Any], str | None]


def _gt(bound: float) -> Check:
    return lambda v: None if v > bound else f"must be > {bound:g}"


def _ge(bound: float) -> Check:
    return lambda v: None if v >= bound else f"must be >= {bound:g}"


def _interval(lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> Check:
    text = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def check(v: Any) -> str | None:
        above = v > lo if lo_open else v >= lo
        below = v < hi if hi_open else v <= hi
        return None if above and below else f"must be in {text}"

    return check


def _one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _fed_id(v: Any) -> str | None:
    return None if valid_id(v) else "must be 1-64 of letters, digits, '_', '.', '-'"


def _port(v: Any) -> str | None:
    return None if 0 < v < 65536 else "must be a TCP port (1-65535)"


def _positive_ints(v: Any) -> str | None:
    return None if all(x > 0 for x in v) else "must hold positive integers"


# -- the schema ----------------------------------------------------------------------------------

_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
        "a finite number",
    ),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "path": (lambda v: isinstance(v, str) and bool(v), "a non-empty path string"),
    "int_list": (
        lambda v: isinstance(v, list)
        and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
        "a list of integers",
    ),
}


@dataclass(frozen=True)
class Key:
    """One config key: its type name (see ``_TYPES``), default (``None`` = optional and unset,
    ``REQUIRED`` = must be given) and value check."""

    type: str
    default: Any = None
    check: Check | None = None


REQUIRED = object()

SCHEMA: dict[str, dict[str, Key]] = {
    "federation": {
        "id": Key("str", REQUIRED, _fed_id),
        "data_dir": Key("path", "data"),
        "enrollment": Key("str", "auto", _one_of("auto", "manual")),
        "heartbeat_s": Key("float", 10.0, _gt(0)),
    },
    "broker": {
        "embedded": Key("bool", True),
        "host": Key("str", "127.0.0.1"),
        "port": Key("int", DEFAULT_BROKER_PORT, _port),
        "advertised_host": Key("str"),
        "advertised_port": Key("int", None, _port),
        "username": Key("str", "orchestrator"),
        "password": Key("str"),
        "password_file": Key("path"),
        "pid_file": Key("path"),
        "tls": Key("bool", False),
        "ca_file": Key("path"),
        "max_message_bytes": Key("int", 8 * MiB - 64 * 1024, _ge(2048)),
        "keepalive_s": Key("int", 30, _gt(0)),
        "session_expiry_s": Key("int", 7 * 24 * 3600, _gt(0)),
        "connect_timeout_s": Key("float", 30.0, _gt(0)),
    },
    "model": {
        "kind": Key("str"),
        "n_features": Key("int"),
        "n_classes": Key("int", 0),
        "hidden": Key("int_list", [], _positive_ints),
        "activation": Key("str", "relu"),
        "seed": Key("int", 0, _ge(0)),
        "graphs_dir": Key("path"),
    },
    "training": {
        "epochs": Key("int", 1, _gt(0)),
        "batch_size": Key("int", 32, _gt(0)),
        "lr": Key("float", 0.05, _ge(0)),
        "mu": Key("float", 0.0, _ge(0)),
        "codec": Key("str", "topk", _one_of(*(c.value for c in Codec))),
        "topk_fraction": Key("float", 0.05, _interval(0, 1, lo_open=True, hi_open=False)),
        "chunk": Key("int", 0, _ge(0)),
        "seal": Key("bool", True),
        "clip_norm": Key("float", None, _gt(0)),
        "noise_multiplier": Key("float", 0.0, _ge(0)),
        "deadline_s": Key("float", 300.0, _gt(0)),
        "min_battery_pct": Key("float", 20.0, _interval(0, 100, lo_open=False, hi_open=False)),
        "max_thermal": Key("str", "fair", _one_of("nominal", "fair", "serious", "critical")),
    },
    "aggregation": {
        "mode": Key("str", "async", _one_of("async", "sync")),
        "k": Key("int", 10, _gt(0)),
        "max_per_version": Key("int", None, _gt(0)),
        "staleness": Key("str", "polynomial", _one_of("constant", "polynomial", "hinge")),
        "a": Key("float", None, _ge(0)),
        "b": Key("int", None, _ge(0)),
        "max_staleness": Key("int", 20, _ge(0)),
        "server_optimizer": Key("str", "sgd", _one_of("sgd", "fedadam", "fedyogi")),
        "server_lr": Key("float", 1.0, _gt(0)),
        "server_momentum": Key("float", 0.0, _interval(0, 1, lo_open=False, hi_open=True)),
        "beta1": Key("float", 0.9, _interval(0, 1, lo_open=False, hi_open=True)),
        "beta2": Key("float", 0.99, _interval(0, 1, lo_open=False, hi_open=True)),
        "tau": Key("float", 1e-3, _gt(0)),
        "reducer": Key("str", "mean", _one_of("mean", "median", "trimmed_mean")),
        "trim_fraction": Key("float", 0.1, _interval(0, 0.5, lo_open=False, hi_open=True)),
        "clip_norm": Key("float", None, _gt(0)),
        "max_update_norm": Key("float", None, _gt(0)),
        "quorum": Key("int", None, _gt(0)),
        "round_deadline_s": Key("float", 60.0, _gt(0)),
        "publish_interval_s": Key("float", 0.25, _ge(0)),
    },
    "selection": {
        "concurrency": Key("int", None, _gt(0)),
        "overcommit": Key("float", 1.5, _ge(1)),
        "retry_after_s": Key("float", 10.0, _gt(0)),
        "require_unmetered": Key("bool", False),
        "min_free_mem_mb": Key("float", None, _ge(0)),
        "max_tasks_per_window": Key("int", None, _gt(0)),
        "window_s": Key("float", 3600.0, _gt(0)),
        "fair_reserve": Key("float", 0.25, _interval(0, 1, lo_open=False, hi_open=True)),
        "novelty_threshold": Key("float", 0.5, _interval(0, 1, lo_open=False, hi_open=False)),
        "classes": Key("bool", False),
        "slow_step_ms": Key("float", 50.0, _gt(0)),
        "slow_mem_mb": Key("float", 128.0, _ge(0)),
        "slow_batch_size": Key("int", 16, _gt(0)),
        "slow_epochs": Key("int", 1, _gt(0)),
        "slow_codec": Key("str", "topk", _one_of(*(c.value for c in Codec))),
        "slow_topk_fraction": Key("float", 0.05, _interval(0, 1, lo_open=True, hi_open=False)),
        "fast_cores": Key("int", 4, _gt(0)),
        "fast_epochs": Key("int", None, _gt(0)),
    },
    "ingest": {
        "max_update_bytes": Key("int", 8 * MiB, _ge(1024)),
        "max_body_bytes": Key("int", 64 * MiB, _ge(1024)),
        "group_batches": Key("int", 64, _gt(0)),
        "decode_workers": Key("int", 2, _ge(0)),
        "queue_batches": Key("int", 1024, _gt(0)),
        "synchronous": Key("str", "FULL", _one_of("FULL", "NORMAL")),
    },
    "evaluation": {
        "dataset": Key("str"),
        "test_fraction": Key("float", 0.2, _interval(0, 1, lo_open=True, hi_open=True)),
        "max_samples": Key("int", 10_000, _gt(0)),
        "federated_every": Key("int", 0, _ge(0)),
        "federated_devices": Key("int", 3, _gt(0)),
    },
    "stopping": {
        "target_metric": Key("float"),
        "higher_is_better": Key("bool", True),
        "patience": Key("int", None, _gt(0)),
        "min_delta": Key("float", 0.0, _ge(0)),
        "max_versions": Key("int", None, _gt(0)),
        "max_wall_s": Key("float", None, _gt(0)),
    },
    "privacy": {
        "mode": Key("str", "off", _one_of("off", "local", "server")),
        "clip_norm": Key("float", 1.0, _gt(0)),
        "noise_multiplier": Key("float", 1.0, _gt(0)),
        "target_delta": Key("float", 1e-5, _interval(0, 1, lo_open=True, hi_open=True)),
        "epsilon_max": Key("float", None, _gt(0)),
        "accountant": Key("str", "rdp", _one_of("rdp", "pld")),
    },
    "robustness": {
        "screening": Key("bool", False),
        "z_threshold": Key("float", 4.0, _gt(0)),
        "min_cosine": Key("float", -0.3, _interval(-1, 1, lo_open=False, hi_open=False)),
        "max_flags": Key("int", 3, _gt(0)),
        "window_s": Key("float", 3600.0, _gt(0)),
    },
    "metrics": {
        "host": Key("str", "127.0.0.1", lambda v: None if v else "must not be empty"),
        "port": Key("int", None, lambda v: None if 0 <= v < 65536 else
                    "must be a TCP port (0 = any free port)"),
    },
    "ops": {
        "fleet_interval_s": Key("float", 5.0, _gt(0)),
    },
}


# -- typed sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FederationConfig:
    id: str
    data_dir: Path
    enrollment: str
    heartbeat_s: float

    @property
    def store_path(self) -> Path:
        return self.data_dir / "orchestrator.db"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "orchestrator.key"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"


@dataclass(frozen=True)
class BrokerConfig:
    """Where the MQTT broker is. ``embedded``: the orchestrator runs its own Mosquitto in
    ``data_dir/broker`` on ``host:port`` (loopback) and manages its password file."""

    embedded: bool
    host: str
    port: int
    advertised_host: str | None
    """Where devices reach the broker, if not ``host`` (written into bundles)."""
    advertised_port: int | None
    username: str
    password: str | None
    password_file: Path | None
    pid_file: Path | None
    tls: bool
    ca_file: Path | None
    max_message_bytes: int
    keepalive_s: int
    session_expiry_s: int
    connect_timeout_s: float
    """How long the service waits for its first connection before giving up."""


@dataclass(frozen=True)
class ModelConfig:
    """A built-in model (``spec``) or third-party graphs: ``graphs_dir`` holds
    ``train_step.onnx``, ``eval.onnx``, ``infer.onnx`` and ``params.npz``."""

    spec: ModelSpec | None
    graphs_dir: Path | None


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int
    batch_size: int
    lr: float
    mu: float
    codec: str
    topk_fraction: float
    chunk: int
    seal: bool
    clip_norm: float | None
    noise_multiplier: float
    deadline_s: float
    min_battery_pct: float
    max_thermal: str

    @property
    def codec_spec(self) -> CodecSpec:
        return CodecSpec(Codec(self.codec), self.chunk, self.topk_fraction)


@dataclass(frozen=True)
class AggregationConfig:
    mode: str
    k: int
    max_per_version: int | None
    """Async: with a backlog, aggregate up to this many buffered updates into one version
    (default ``k``: exactly K per version). Larger values amortise the per-version cost."""
    staleness: str
    a: float | None
    b: int | None
    max_staleness: int
    server_optimizer: str
    server_lr: float
    server_momentum: float
    beta1: float
    beta2: float
    tau: float
    reducer: str
    trim_fraction: float
    clip_norm: float | None
    max_update_norm: float | None
    quorum: int | None
    round_deadline_s: float
    publish_interval_s: float
    """Least time between two model publications: versions made faster are coalesced (the
    latest is published; every device downloads each publication, so 50 versions a second
    would be 50 snapshots a second to every device)."""


@dataclass(frozen=True)
class SelectionConfig:
    concurrency: int
    """Devices training at once (default: ceil(aggregation.k * overcommit))."""
    overcommit: float
    retry_after_s: float
    require_unmetered: bool
    min_free_mem_mb: float | None
    max_tasks_per_window: int | None
    """Participation cap per device per ``window_s`` (None: no cap)."""
    window_s: float
    fair_reserve: float
    """Share of the concurrency kept for under-represented devices (see selection)."""
    novelty_threshold: float
    classes: bool
    """Per-class task settings (see ``orchestrator.classes``); off: one setting for all."""
    slow_step_ms: float
    slow_mem_mb: float
    slow_batch_size: int
    slow_epochs: int
    slow_codec: str
    slow_topk_fraction: float
    fast_cores: int
    fast_epochs: int | None


@dataclass(frozen=True)
class IngestConfig:
    max_update_bytes: int
    """Largest signed update envelope accepted (larger ones: ``too_large``)."""
    max_body_bytes: int
    """Largest decompressed update body (zstd bombs stop here)."""
    group_batches: int
    """Most queued batches committed together in one store transaction."""
    decode_workers: int
    """Processes that verify, unseal and decode updates (see orchestrator.decode_pool);
    0 judges them in a thread of the service."""
    queue_batches: int
    synchronous: str
    """SQLite durability: FULL fsyncs every commit (power-loss safe); NORMAL survives a
    process crash only (benchmarks, simulations)."""


@dataclass(frozen=True)
class EvaluationConfig:
    dataset: str | None
    """A name known to ``orchestrator.datasets`` or an ``.npz`` path; None: no evaluation."""
    test_fraction: float
    max_samples: int
    federated_every: int
    """Federated evaluation of every N-th version on devices' held-out data (0: off)."""
    federated_devices: int
    """Devices asked to evaluate each such version."""


@dataclass(frozen=True)
class StoppingConfig:
    target_metric: float | None
    higher_is_better: bool
    """The metric's direction (accuracy: true; an autoencoder's reconstruction error: false)."""
    patience: int | None
    min_delta: float
    max_versions: int | None
    max_wall_s: float | None

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.target_metric, self.patience,
                                            self.max_versions, self.max_wall_s))


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy (see :mod:`orchestrator.privacy`). ``off``: tasks
    carry ``[training]``'s clip/noise as given and nothing is accounted; ``local``: devices
    clip and noise; ``server``: devices clip, the orchestrator noises each aggregate."""

    mode: str = "off"
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    target_delta: float = 1e-5
    epsilon_max: float | None = None
    """Each device's own budget; a device that would exceed it is no longer selected."""
    accountant: str = "rdp"

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True)
class RobustnessConfig:
    """Anomaly screening of buffered updates before aggregation, with quarantine and
    automatic isolation of a device flagged ``max_flags`` times within ``window_s``."""

    screening: bool = False
    z_threshold: float = 4.0
    min_cosine: float = -0.3
    """Sign-flipped updates scored -0.32 to -0.8 against the running aggregate on non-IID
    ``load_digits``; honest ones from skewed shards down to -0.27 near convergence."""
    max_flags: int = 3
    window_s: float = 3600.0


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint (``GET /metrics``): off unless ``port`` is set."""

    host: str = "127.0.0.1"
    port: int | None = None


@dataclass(frozen=True)
class OpsConfig:
    fleet_interval_s: float = 5.0
    """How often the retained fleet summary (``fl/{fed}/fleet``) is refreshed."""


@dataclass(frozen=True)
class Config:
    federation: FederationConfig
    broker: BrokerConfig
    model: ModelConfig
    training: TrainingConfig
    aggregation: AggregationConfig
    selection: SelectionConfig
    ingest: IngestConfig
    evaluation: EvaluationConfig
    stopping: StoppingConfig
    source: Path | None = None
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)

    @property
    def password_file(self) -> Path | None:
        """The broker password file device credentials go to (None: not managed here)."""
        if self.broker.embedded:
            return self.federation.broker_dir / "passwd"
        return self.broker.password_file

    @property
    def broker_pid_file(self) -> Path | None:
        if self.broker.embedded:
            return self.federation.broker_dir / "mosquitto.pid"
        return self.broker.pid_file


# -- loading -------------------------------------------------------------------------------------


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
            raise ConfigError(f"[{section}]: unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{section}: must be a table ([{section}])")
    if "federation" not in data:
        raise ConfigError("federation.id: required")
    v = {name: _section(name, data.get(name, {}), base) for name in SCHEMA}
    return _assemble(v, source)


def _section(name: str, table: Mapping[str, Any], base: Path) -> dict[str, Any]:
    keys = SCHEMA[name]
    for key in table:
        if key not in keys:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(keys)})")
    out: dict[str, Any] = {}
    for key, spec in keys.items():
        where = f"{name}.{key}"
        if key not in table:
            if spec.default is REQUIRED:
                raise ConfigError(f"{where}: required")
            default = spec.default
            if spec.type == "path" and default is not None:
                default = _path(default, base)
            out[key] = list(default) if isinstance(default, list) else default
            continue
        value = table[key]
        accepts, expected = _TYPES[spec.type]
        if not accepts(value):
            raise ConfigError(f"{where}: expected {expected}, got {_describe(value)}")
        if spec.check is not None:
            problem = spec.check(value)
            if problem is not None:
                raise ConfigError(f"{where}: {problem}, got {value!r}")
        if spec.type == "float":
            value = float(value)
        elif spec.type == "path":
            value = _path(value, base)
        out[key] = value
    return out


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def _path(value: str, base: Path) -> Path:
    p = Path(os.path.expanduser(value))
    # normpath, not resolve: symlinked data directories stay as the operator named them
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _assemble(v: dict[str, dict[str, Any]], source: Path | None) -> Config:
    fed = FederationConfig(**v["federation"])
    broker = BrokerConfig(**v["broker"])
    if not broker.embedded and broker.password is None:
        raise ConfigError("broker.password: required when broker.embedded = false")
    if broker.ca_file is not None and not broker.tls:
        raise ConfigError("broker.ca_file: set broker.tls = true to use a CA file")
    if broker.embedded and broker.host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"broker.host: an embedded broker listens on loopback only, "
                          f"got {broker.host!r}")
    model = _model(v["model"])
    training = TrainingConfig(**v["training"])
    agg = AggregationConfig(**v["aggregation"])
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
    sel = v["selection"]
    concurrency = sel["concurrency"]
    if concurrency is None:
        concurrency = max(1, math.ceil(agg.k * sel["overcommit"]))
    selection = SelectionConfig(**{**sel, "concurrency": concurrency})
    if agg.quorum is not None and agg.quorum > selection.concurrency:
        raise ConfigError(f"aggregation.quorum: must be <= selection.concurrency "
                          f"({selection.concurrency}), got {agg.quorum}")
    ingest = IngestConfig(**v["ingest"])
    evaluation = EvaluationConfig(**v["evaluation"])
    stopping = StoppingConfig(**v["stopping"])
    if stopping.target_metric is not None and evaluation.dataset is None:
        raise ConfigError("stopping.target_metric: needs evaluation.dataset to measure it")
    if stopping.patience is not None and evaluation.dataset is None:
        raise ConfigError("stopping.patience: needs evaluation.dataset to measure a plateau")
    privacy = _privacy(v["privacy"], training, agg)
    robustness = RobustnessConfig(**v["robustness"])
    return Config(fed, broker, model, training, agg, selection, ingest, evaluation, stopping,
                  source, privacy=privacy, robustness=robustness,
                  metrics=MetricsConfig(**v["metrics"]), ops=OpsConfig(**v["ops"]))


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
                         hidden=tuple(m["hidden"]), activation=m["activation"], seed=m["seed"])
    except ValueError as exc:
        # ModelSpec's messages start with the field name ("n_classes: ...")
        raise ConfigError(f"model.{exc}") from None
    return ModelConfig(spec=spec, graphs_dir=None)
