"""The configuration's sections: each key declared once, with its type, bounds, doc and default.

Every field is a key of the TOML table of the same name (see :mod:`._fields` for how a field
declares one); :data:`SECTIONS` lists the tables in file order. ``examples/orchestrator.toml``
shows every key, and a test holds it to these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Final, Literal

from orchestrator.models import ModelSpec
from schemas.tensors import Codec, CodecSpec

from ._fields import (
    ANY_PORT,
    BETAS,
    DERIVED,
    FED_ID,
    NOT_EMPTY,
    POSITIVE_ITEMS,
    TCP_PORT,
    ge,
    gt,
    within,
)
from .limits import LimitsConfig

__all__ = [
    "DEFAULT_BROKER_PORT",
    "SECTIONS",
    "AccountantName",
    "AggregationConfig",
    "AggregationMode",
    "AnomalyConfig",
    "BrokerConfig",
    "CodecName",
    "Config",
    "DeviceOptimizerName",
    "Enrollment",
    "EvaluationConfig",
    "FederationConfig",
    "IngestConfig",
    "LimitsConfig",
    "MetricsConfig",
    "ModelConfig",
    "ModelKeys",
    "OpsConfig",
    "OptimizerName",
    "PrivacyConfig",
    "PrivacyMode",
    "ReducerName",
    "RobustnessConfig",
    "SamplingName",
    "SelectionConfig",
    "StalenessName",
    "StandardizeConfig",
    "StoppingConfig",
    "Synchronous",
    "ThermalName",
    "TrainingConfig",
]

DEFAULT_BROKER_PORT = 18830
_MiB = 1024 * 1024

# The enumerations. Where a module consuming a key has its own Literal or enum, a test holds
# the two equal (Codec and Thermal from schemas/, the reducers, DP modes and accountants).
Enrollment = Literal["auto", "manual"]
CodecName = Literal["float32", "float16", "int8", "topk"]
ThermalName = Literal["nominal", "fair", "serious", "critical"]
AggregationMode = Literal["async", "sync"]
StalenessName = Literal["constant", "polynomial", "hinge"]
OptimizerName = Literal["sgd", "fedadam", "fedyogi"]
DeviceOptimizerName = Literal["sgd", "momentum", "adam"]
ReducerName = Literal["mean", "median", "trimmed_mean"]
Synchronous = Literal["FULL", "NORMAL"]
PrivacyMode = Literal["off", "local", "server", "distributed"]
AccountantName = Literal["rdp", "pld"]
SamplingName = Literal["none", "poisson"]


@dataclass(frozen=True)
class FederationConfig:
    id: Annotated[str, FED_ID, "the federation's id, in every topic (required)"]
    data_dir: Annotated[Path, "holds the store, the orchestrator's key and broker/"] = Path("data")
    enrollment: Annotated[Enrollment, '"auto": enrolled keys are active; "manual": '
                          "each waits for `fedmq device approve`"] = "auto"
    heartbeat_s: Annotated[float, gt(0), "told to agents in the enrollment answer"] = 10.0
    revoke_grace_s: Annotated[float, ge(0), "a revoked device's broker credential is removed "
                              "when it confirms its Control(revoke), or this long after the "
                              "order went out"] = 600.0
    password_grace_s: Annotated[float, gt(0), "a device given a new broker password keeps "
                                "its old one until it confirms, or this long after the "
                                "first offer"] = 7 * 24 * 3600.0
    key_grace_s: Annotated[float, gt(0), "after `fedmq orchestrator rotate-key`, devices may "
                           "still adopt the new key, and updates sealed to the old key open, "
                           "this long (the default of --grace)"] = 7 * 24 * 3600.0

    @property
    def store_path(self) -> Path:
        return self.data_dir / "orchestrator.db"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "orchestrator.key"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def tls_dir(self) -> Path:
        """Our own client certificate, when the broker requires one and none is configured."""
        return self.data_dir / "tls"


@dataclass(frozen=True)
class BrokerConfig:
    """Where the MQTT broker is. ``embedded``: the orchestrator runs its own Mosquitto in
    ``data_dir/broker`` on ``host:port`` (loopback) and manages its password file."""

    embedded: Annotated[bool, "run and supervise our own Mosquitto in data_dir/broker"] = True
    host: Annotated[str, "the broker's host (embedded: loopback only)"] = "127.0.0.1"
    port: Annotated[int, TCP_PORT, "the broker's port (fixed, so bundles can name it)"] = (
        DEFAULT_BROKER_PORT)
    advertised_host: Annotated[str | None, "where devices reach the broker, if not host "
                               "(written into bundles)"] = None
    advertised_port: Annotated[int | None, TCP_PORT, "the port devices reach, if not port"] = None
    username: Annotated[str, "our account on an external broker"] = "orchestrator"
    password: Annotated[str | None, "our password (required when embedded = false)"] = None
    password_file: Annotated[Path | None, "external broker: where `device add` writes "
                             "credentials"] = None
    pid_file: Annotated[Path | None, "external broker: reloaded (SIGHUP) after credential "
                        "changes"] = None
    tls: Annotated[bool, "connect with TLS"] = False
    ca_file: Annotated[Path | None, "the CA that signed the broker's certificate (needs "
                       "tls); `device add` embeds it in bundles"] = None
    client_certificates: Annotated[bool, "the broker requires client certificates (prod.conf's "
                                   "variant): `device add` issues one per device"] = False
    ca_key_file: Annotated[Path | None, "the key of ca_file, which signs the client "
                           "certificates (needs client_certificates)"] = None
    cert_file: Annotated[Path | None, "our own client certificate (default: issued at start "
                         "into data_dir/tls/)"] = None
    key_file: Annotated[Path | None, "the key of cert_file"] = None
    client_cert_days: Annotated[int, gt(0), "validity of the client certificates we issue"] = (
        825)
    max_message_bytes: Annotated[int, ge(2048), "larger model messages go out as chunks"] = (
        8 * _MiB - 64 * 1024)
    keepalive_s: Annotated[int, gt(0), "MQTT keepalive"] = 30
    session_expiry_s: Annotated[int, gt(0), "the broker keeps our session (and queued "
                                "updates) this long"] = 7 * 24 * 3600
    connect_timeout_s: Annotated[float, gt(0), "how long the service waits for its first "
                                 "connection before giving up"] = 30.0


@dataclass(frozen=True)
class ModelKeys:
    """The ``[model]`` table as the file gives it; the loader makes a :class:`ModelConfig`."""

    kind: Annotated[str | None, "a built-in model: softmax | logistic | mlp | autoencoder"] = None
    n_features: Annotated[int | None, "the built-in model's inputs"] = None
    n_classes: Annotated[int, "its classes (0: an autoencoder, or logistic as 2)"] = 0
    hidden: Annotated[tuple[int, ...], POSITIVE_ITEMS, "its hidden layer widths"] = ()
    activation: Annotated[str, "its hidden activation: relu | tanh"] = "relu"
    seed: Annotated[int, ge(0), "seed of its initial weights"] = 0
    graphs_dir: Annotated[Path | None, "or third-party graphs: train_step.onnx, eval.onnx, "
                          "infer.onnx, params.npz"] = None


@dataclass(frozen=True)
class ModelConfig:
    """A built-in model (``spec``) or third-party graphs: ``graphs_dir`` holds
    ``train_step.onnx``, ``eval.onnx``, ``infer.onnx`` and ``params.npz``."""

    spec: ModelSpec | None
    graphs_dir: Path | None


@dataclass(frozen=True)
class TrainingConfig:
    """What each task asks of a device."""

    epochs: Annotated[int, gt(0), "local epochs per task"] = 1
    batch_size: Annotated[int, gt(0), "local batch size"] = 32
    lr: Annotated[float, ge(0), "local learning rate"] = 0.05
    mu: Annotated[float, ge(0), "FedProx proximal term"] = 0.0
    optimizer: Annotated[DeviceOptimizerName, "the on-device optimizer: sgd | momentum | "
                         "adam"] = "sgd"
    momentum: Annotated[float, within("[0, 1)"), "momentum: the velocity's decay"] = 0.9
    adam_betas: Annotated[tuple[float, ...], BETAS, "adam: beta1 and beta2"] = (0.9, 0.999)
    weight_decay: Annotated[float, ge(0), "L2 on the gradient for sgd and momentum, "
                            "decoupled (AdamW) for adam"] = 0.0
    codec: Annotated[CodecName, "how updates are encoded (topk: top-k indices, int8 "
                     "values)"] = "topk"
    topk_fraction: Annotated[float, within("(0, 1]"), "topk: share of elements sent"] = 0.05
    chunk: Annotated[int, ge(0), "int8: elements per scale (0: one per tensor)"] = 0
    seal: Annotated[bool, "seal update bodies to the orchestrator's key"] = True
    clip_norm: Annotated[float | None, gt(0), "clip each delta on the device (without "
                         "[privacy])"] = None
    noise_multiplier: Annotated[float, ge(0), "device noise std over clip_norm (without "
                                "[privacy])"] = 0.0
    deadline_s: Annotated[float, gt(0), "a straggler past this is no longer waited for"] = 300.0
    min_battery_pct: Annotated[float, within("[0, 100]"), "below this (and not charging) a "
                               "device is deferred"] = 20.0
    max_thermal: Annotated[ThermalName, "a hotter device is deferred"] = "fair"

    @property
    def codec_spec(self) -> CodecSpec:
        return CodecSpec(Codec(self.codec), self.chunk, self.topk_fraction)


@dataclass(frozen=True)
class AggregationConfig:
    mode: Annotated[AggregationMode, '"async" (FedBuff) or "sync" (rounds, plain '
                    "FedAvg)"] = "async"
    k: Annotated[int, gt(0), "async: updates per new version"] = 10
    max_per_version: Annotated[int | None, gt(0), "async: with a backlog, fold up to this many "
                               "into one version (default: k)"] = None
    staleness: Annotated[StalenessName, "the staleness weight: constant | polynomial "
                         "((1+s)^-a) | hinge"] = "polynomial"
    a: Annotated[float | None, ge(0), "polynomial: the alpha, in (0, 1]; hinge: a"] = None
    b: Annotated[int | None, ge(0), "hinge: b"] = None
    max_staleness: Annotated[int, ge(0), 'staler updates are rejected ("stale")'] = 20
    server_optimizer: Annotated[OptimizerName, "applies each aggregate to the model"] = "sgd"
    server_lr: Annotated[float, gt(0), "the server optimizer's learning rate"] = 1.0
    server_momentum: Annotated[float, within("[0, 1)"), "sgd: momentum"] = 0.0
    beta1: Annotated[float, within("[0, 1)"), "fedadam / fedyogi: beta1"] = 0.9
    beta2: Annotated[float, within("[0, 1)"), "fedadam / fedyogi: beta2"] = 0.99
    tau: Annotated[float, gt(0), "fedadam / fedyogi: adaptivity"] = 1e-3
    reducer: Annotated[ReducerName, "how buffered deltas are combined"] = "mean"
    trim_fraction: Annotated[float, within("[0, 0.5)"), "trimmed_mean: share cut at each "
                             "end"] = 0.1
    clip_norm: Annotated[float | None, gt(0), "clip every delta at the server before "
                         "reducing"] = None
    max_update_norm: Annotated[float | None, gt(0), "reject updates with a larger L2 norm "
                               '("norm_exceeded")'] = None
    quorum: Annotated[int | None, gt(0), "sync: updates that close a round (default: "
                      "selection.concurrency)"] = None
    round_deadline_s: Annotated[float, gt(0), "sync: a round closes at its deadline with what "
                                "it has"] = 60.0
    # Every device downloads each publication: 50 versions a second unthrottled would be 50
    # snapshots a second to every device.
    publish_interval_s: Annotated[float, ge(0), "least time between two publications (the "
                                  "latest of faster versions goes out)"] = 0.25


@dataclass(frozen=True)
class SelectionConfig:
    """Who trains next (see :mod:`orchestrator.devices.selection` and
    :mod:`orchestrator.devices.classes`)."""

    concurrency: Annotated[int, gt(0), DERIVED, "devices training at once (default: "
                           "ceil(aggregation.k * overcommit))"]
    overcommit: Annotated[float, ge(1), "the default concurrency is k times this"] = 1.5
    retry_after_s: Annotated[float, gt(0), "a deferred device asks again after about this "
                             "long"] = 10.0
    require_unmetered: Annotated[bool, "defer devices on a metered network"] = False
    min_free_mem_mb: Annotated[float | None, ge(0), "defer devices with less free "
                               "memory"] = None
    max_tasks_per_window: Annotated[int | None, gt(0), "participation cap per device per "
                                    "window_s (default: none)"] = None
    window_s: Annotated[float, gt(0), "the window of max_tasks_per_window"] = 3600.0
    fair_reserve: Annotated[float, within("[0, 1)"), "share of the concurrency kept for "
                            "under-represented devices"] = 0.25
    novelty_threshold: Annotated[float, within("[0, 1]"), "label-mix novelty that makes a "
                                 "device under-represented"] = 0.5
    classes: Annotated[bool, "per-class task settings from cores, memory and step time"] = False
    slow_step_ms: Annotated[float, gt(0), "slow: step time above this ..."] = 50.0
    slow_mem_mb: Annotated[float, ge(0), "... or less free memory than this"] = 128.0
    slow_batch_size: Annotated[int, gt(0), "slow devices' batch size"] = 16
    slow_epochs: Annotated[int, gt(0), "slow devices' local epochs"] = 1
    slow_codec: Annotated[CodecName, "slow devices' codec"] = "topk"
    slow_topk_fraction: Annotated[float, within("(0, 1]"), "slow devices' topk "
                                  "fraction"] = 0.05
    fast_cores: Annotated[int, gt(0), "fast: this many cores and a quick step time"] = 4
    fast_epochs: Annotated[int | None, gt(0), "fast devices' local epochs (default: "
                           "training.epochs)"] = None


@dataclass(frozen=True)
class IngestConfig:
    max_update_bytes: Annotated[int, ge(1024), 'a larger signed update is rejected '
                                '("too_large")'] = 8 * _MiB
    max_body_bytes: Annotated[int, ge(1024), "decompressed body cap (zstd bombs stop "
                              "here)"] = 64 * _MiB
    group_batches: Annotated[int, gt(0), "queued batches judged and committed in one "
                             "transaction"] = 64
    decode_workers: Annotated[int, ge(0), "processes that verify, unseal and decode updates "
                              "(0: a thread)"] = 2
    queue_batches: Annotated[int, gt(0), "received batches waiting to be judged"] = 1024
    synchronous: Annotated[Synchronous, "SQLite: FULL fsyncs each commit; NORMAL survives a "
                           "process crash only"] = "FULL"


@dataclass(frozen=True)
class EvaluationConfig:
    """Optional server-side validation after each version."""

    dataset: Annotated[str | None, "a name from orchestrator.convergence.datasets or an .npz path "
                       "(unset: none)"] = None
    test_fraction: Annotated[float, within("(0, 1)"), "the dataset's held-out share"] = 0.2
    max_samples: Annotated[int, gt(0), "most samples evaluated"] = 10_000
    federated_every: Annotated[int, ge(0), "every N-th version is also evaluated by devices "
                               "(0: off)"] = 0
    federated_devices: Annotated[int, gt(0), "devices asked per evaluated version"] = 3


@dataclass(frozen=True)
class StoppingConfig:
    """Optional; the first rule that fires stops the federation."""

    target_metric: Annotated[float | None, "stop once the metric reaches this"] = None
    higher_is_better: Annotated[bool, "the metric's direction (a reconstruction error: "
                                "false)"] = True
    patience: Annotated[int | None, gt(0), "versions without improvement by more than "
                        "min_delta"] = None
    min_delta: Annotated[float, ge(0), "the least change that counts as improvement"] = 0.0
    max_versions: Annotated[int | None, gt(0), "stop at this many versions"] = None
    max_wall_s: Annotated[float | None, gt(0), "stop after this long"] = None

    @property
    def enabled(self) -> bool:
        return any(v is not None for v in (self.target_metric, self.patience,
                                            self.max_versions, self.max_wall_s))


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level differential privacy (see :mod:`orchestrator.privacy`). ``off``: tasks
    carry ``[training]``'s clip/noise as given and nothing is accounted; ``local``: devices
    clip and noise; ``server``: devices clip, the orchestrator noises each aggregate;
    ``distributed``: secure-bucket members clip and add shares of the noise on their bucket's
    sum, the orchestrator adds none."""

    mode: Annotated[PrivacyMode, "off | local | server | distributed"] = "off"
    clip_norm: Annotated[float, gt(0), "every delta is clipped to this global L2 norm"] = 1.0
    noise_multiplier: Annotated[float, gt(0), "Gaussian noise std over clip_norm"] = 1.0
    target_delta: Annotated[float, within("(0, 1)"), "epsilon is reported at this delta"] = 1e-5
    epsilon_max: Annotated[float | None, gt(0), "each device's budget: a spent device is no "
                           "longer tasked"] = None
    accountant: Annotated[AccountantName, "dp-accounting's RDP or PLD accountant"] = "rdp"
    sampling: Annotated[SamplingName, "none: no amplification by subsampling (fedmq's "
                        "selection is not Poisson); poisson: assume it (optimistic)"] = "none"

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True)
class RobustnessConfig:
    """Anomaly screening of buffered updates before aggregation, with quarantine and
    automatic isolation of a device flagged ``max_flags`` times within ``window_s``."""

    screening: Annotated[bool, "screen buffered updates: norm and direction outliers, "
                         "NaN/Inf"] = False
    z_threshold: Annotated[float, gt(0), "robust z-score of log-norms that flags an "
                           "update"] = 4.0
    # Sign-flipped updates scored -0.32 to -0.8 against the running aggregate on non-IID
    # load_digits; honest ones from skewed shards down to -0.27 near convergence.
    min_cosine: Annotated[float, within("[-1, 1]"), "lowest cosine to the running aggregate "
                          "direction"] = -0.3
    max_flags: Annotated[int, gt(0), "flags within window_s that isolate a device"] = 3
    window_s: Annotated[float, gt(0), "the window of max_flags"] = 3600.0


@dataclass(frozen=True)
class AnomalyConfig:
    """The federated anomaly threshold of an unsupervised model (one whose ``infer`` graph
    gives a ``score``): devices evaluating a version report noisy histograms of their
    held-out scores, and the threshold is a quantile of their sum. Needs
    ``evaluation.federated_every``."""

    quantile: Annotated[float, within("(0, 1)"), "the share of healthy samples scored below "
                        "the threshold"] = 0.99
    score_noise: Annotated[float, ge(0), "std of the Gaussian noise each device adds to each "
                           "histogram count (differential privacy; 0: none)"] = 2.0
    min_samples: Annotated[int, gt(0), "held-out samples (summed over devices) a threshold "
                           "needs"] = 500


@dataclass(frozen=True)
class StandardizeConfig:
    """Federated feature standardisation: before any training, devices report their local
    feature statistics; once enough have, a version fixes the federation-wide mean and
    scale, which every later version keeps (the devices standardise their data with it)."""

    enabled: Annotated[bool, "standardise the model's input features"] = False
    min_devices: Annotated[int, gt(0), "devices whose statistics are pooled"] = 3
    min_samples: Annotated[int, gt(0), "samples those devices hold in all"] = 100


@dataclass(frozen=True)
class SecureAggregationConfig:
    """Secure buckets (docs/secagg.md): devices are tasked in cohorts whose deltas the
    orchestrator sees only summed. Each completed bucket enters FedBuff as one update, so
    ``[aggregation] buffer_size`` counts buckets."""

    enabled: Annotated[bool, "task devices in secure buckets"] = False
    bucket_size: Annotated[int, ge(2), "members per bucket"] = 10
    threshold: Annotated[float, within("(0, 1]"), "the share of a member's holders whose "
                         "shares rebuild its secrets (and of members that must survive)"] = 0.5
    degree: Annotated[int, ge(0), "neighbours per member (0: ceil(3·log2 n), at most "
                      "n − 1)"] = 0
    value_bound: Annotated[float, gt(0), "a clipped coordinate's largest magnitude in ring "
                           "units, before weighting (127: int8 resolution)"] = 127.0
    clip_norm: Annotated[float, gt(0), "members clip their delta to this L2 norm (with "
                         "[privacy] on, its clip_norm is used)"] = 1.0
    weight_cap: Annotated[float, gt(0), "the largest weight one member may carry"] = 2.0
    weight_unit: Annotated[float, gt(0), "samples per unit of weight"] = 64.0
    form_timeout_s: Annotated[float, gt(0), "a bucket short of bucket_size forms after this "
                              "with the members it has (if they reach the threshold)"] = 60.0
    key_timeout_s: Annotated[float, gt(0), "the key stage closes after this"] = 60.0
    deadline_s: Annotated[float, gt(0), "the input stage closes after this (training time)"
                          ] = 300.0
    unmask_timeout_s: Annotated[float, gt(0), "a bucket whose shares are not in after this "
                                "is abandoned"] = 300.0


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint (``GET /metrics``): off unless ``port`` is set."""

    host: Annotated[str, NOT_EMPTY, "where it listens (keep it on loopback)"] = "127.0.0.1"
    port: Annotated[int | None, ANY_PORT, "its port (0: any free port; unset: off)"] = None


@dataclass(frozen=True)
class OpsConfig:
    """Operator access over MQTT (``fedmq fleet`` / ``federation`` / ``audit``)."""

    fleet_interval_s: Annotated[float, gt(0), "how often the retained fleet summary is "
                                "refreshed"] = 5.0


SECTIONS: Final[dict[str, type]] = {
    "federation": FederationConfig,
    "broker": BrokerConfig,
    "model": ModelKeys,
    "training": TrainingConfig,
    "aggregation": AggregationConfig,
    "selection": SelectionConfig,
    "ingest": IngestConfig,
    "evaluation": EvaluationConfig,
    "stopping": StoppingConfig,
    "privacy": PrivacyConfig,
    "robustness": RobustnessConfig,
    "anomaly": AnomalyConfig,
    "standardize": StandardizeConfig,
    "secure_aggregation": SecureAggregationConfig,
    "metrics": MetricsConfig,
    "ops": OpsConfig,
    "limits": LimitsConfig,
}
"""The tables of a config file in file order, each the dataclass that declares its keys."""


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
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    standardize: StandardizeConfig = field(default_factory=StandardizeConfig)
    secure_aggregation: SecureAggregationConfig = field(
        default_factory=SecureAggregationConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

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
