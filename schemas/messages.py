"""Every message of the wire protocol as a frozen dataclass (see docs/wire-protocol.md).

Each type's ``TYPE`` is its tag in the signed header. Schema evolution: new fields are
appended with defaults, fields are never retyped, tags are never reused. Receivers ignore
keys they do not know, so an older orchestrator accepts a newer agent's status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from .annex import SCORE_BINS, FeatureStats, ModelAnnex
from .secagg.spec import BucketSpec
from .tensors import Codec, CodecSpec, EncodedTensor

PROTOCOL_VERSION = 1


class Thermal(StrEnum):
    NOMINAL = "nominal"
    FAIR = "fair"
    SERIOUS = "serious"
    CRITICAL = "critical"


class AgentState(StrEnum):
    IDLE = "idle"
    TRAINING = "training"
    DEFERRED = "deferred"
    PAUSED = "paused"  # conditions (battery, heat) stopped local work
    STOPPED = "stopped"  # the federation stopped, or the device was revoked/isolated
    OFFLINE = "offline"  # the Last Will


class AckOutcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class EnrollStatus(StrEnum):
    ACTIVE = "active"
    AWAITING_APPROVAL = "awaiting_approval"
    REJECTED = "rejected"


class TaskAction(StrEnum):
    TRAIN = "train"
    EVALUATE = "evaluate"


class Optimizer(StrEnum):
    """The on-device optimizer a task asks for (see edge_agent/optim.py)."""

    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"


class ControlAction(StrEnum):
    REVOKE = "revoke"
    ISOLATE = "isolate"
    REINSTATE = "reinstate"
    RECONFIGURE = "reconfigure"
    ROTATE_KEY = "rotate_key"  # orchestrator asks the device to rotate its key now
    KEY_ROTATED = "key_rotated"  # the new key (params["public_key"]) is registered: switch
    NEW_PASSWORD = "new_password"  # params["sealed"]: a broker password sealed to the device
    PASSWORD_ROTATED = "password_rotated"  # the broker takes only the new password now
    STOP = "stop"  # the federation has converged or was stopped: go idle
    RESUME = "resume"


class Message:
    """Base of all message types: ``TYPE`` is the tag in the signed header."""

    TYPE: ClassVar[str]


# -- device → orchestrator --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enroll(Message):
    """First contact: the device's own public key, MACed with the one-time enrollment secret.

    The envelope is signed by the key it carries (proof of possession); the HMAC is what
    authenticates the device. See :func:`schemas.signing.enroll_mac`.
    """

    TYPE: ClassVar[str] = "enroll"
    device_id: str
    public_key: bytes
    mac: bytes
    agent_version: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.public_key) != 32:
            raise ValueError("public_key must be 32 bytes")
        if len(self.mac) != 32:
            raise ValueError("mac must be 32 bytes")


@dataclass(frozen=True, slots=True)
class KeyRotation(Message):
    """A new device key, sent in an envelope signed by the old key (which vouches for it)."""

    TYPE: ClassVar[str] = "rotate_key"
    new_public_key: bytes
    proof: bytes
    """Ed25519 signature by the new key over the old public key (proof of possession)."""


@dataclass(frozen=True, slots=True)
class PasswordReceipt(Message):
    """The device holds (durably) the broker password a ``Control(new_password)`` sealed to
    it, on ``up/{dev}/rotate``; the orchestrator switches the broker's entry only then."""

    TYPE: ClassVar[str] = "password_receipt"
    password_sha256: bytes
    """SHA-256 of the new password's UTF-8 bytes: proof that the device could open it."""


@dataclass(frozen=True, slots=True)
class Status(Message):
    """Heartbeat (retained; the Last Will is one with ``state == offline``)."""

    TYPE: ClassVar[str] = "status"
    state: AgentState = AgentState.IDLE
    battery_pct: float | None = None
    charging: bool = False
    thermal: Thermal = Thermal.NOMINAL
    metered: bool = False
    free_mem_mb: float | None = None
    cores: int = 1
    step_time_ms: float | None = None
    model_version: int | None = None
    outbox_len: int = 0
    num_samples: int = 0
    label_counts: dict[str, int] = field(default_factory=dict)
    """Optional label histogram of the local data (metadata for fairness, never raw data)."""
    reason: str = ""
    busy_task: str = ""
    feature_stats: FeatureStats | None = None
    """Sent only while the published model asks for them (``ModelAnnex.wants_stats``)."""
    scored: int = 0
    """Samples the device scored for anomalies since it started (unsupervised models)."""
    anomalies: int = 0
    """Of those, how many scored above the federation's anomaly threshold."""

    def __post_init__(self) -> None:
        if not 0 <= self.anomalies <= self.scored:
            raise ValueError("anomalies must be in [0, scored]")


@dataclass(frozen=True, slots=True)
class Update(Message):
    """One local training result: a (possibly compressed) delta with its provenance.

    ``tensors`` hold ``local − base``. The body of an update may be sealed to the
    orchestrator's key (see :mod:`schemas.envelope`).
    """

    TYPE: ClassVar[str] = "update"
    task_id: str
    base_version: int
    num_samples: int
    tensors: list[EncodedTensor]
    local_steps: int = 0
    train_loss: float = float("nan")
    train_ms: float = 0.0
    device_class: str = ""
    codec: Codec = Codec.INT8
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    optimizer: Optimizer = Optimizer.SGD
    """The optimizer the device trained with (an older agent, not saying, used plain SGD)."""

    def __post_init__(self) -> None:
        if self.num_samples <= 0:
            raise ValueError("num_samples must be positive")
        if self.base_version < 0:
            raise ValueError("base_version must be >= 0")


@dataclass(frozen=True, slots=True)
class UpdateBatch:
    """What is published on ``up/{dev}/updates``: a list of individually signed ``update``
    envelopes. Not an envelope itself: each entry has its own seq and is acked by it."""

    entries: list[bytes]


@dataclass(frozen=True, slots=True)
class EvalReport(Message):
    TYPE: ClassVar[str] = "eval"
    task_id: str
    model_version: int
    num_samples: int
    loss: float
    metric: float
    metric_name: str = "accuracy"
    score_hist: list[float] = field(default_factory=list)
    """For an unsupervised model: the held-out scores' histogram over ``SCORE_EDGES``, with
    the task's ``score_noise`` added (empty: none)."""

    def __post_init__(self) -> None:
        if self.score_hist and len(self.score_hist) != SCORE_BINS:
            raise ValueError(f"score_hist must have {SCORE_BINS} counts")
        if not all(math.isfinite(c) for c in self.score_hist):
            raise ValueError("score_hist must be finite")


# -- orchestrator → device --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enrolled(Message):
    TYPE: ClassVar[str] = "enrolled"
    device_id: str
    status: EnrollStatus
    reason: str = ""
    heartbeat_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Task(Message):
    """Train (or evaluate) on the given model version, under these conditions."""

    TYPE: ClassVar[str] = "task"
    task_id: str
    model_version: int
    action: TaskAction = TaskAction.TRAIN
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    mu: float = 0.0
    clip_norm: float | None = None
    noise_multiplier: float = 0.0
    codec: CodecSpec = field(default_factory=CodecSpec)
    seal: bool = True
    deadline_ms: int = 0
    """Absolute time after which the orchestrator stops waiting (0 = none)."""
    min_battery_pct: float = 0.0
    max_thermal: Thermal = Thermal.SERIOUS
    optimizer: Optimizer = Optimizer.SGD
    """How the device steps; an older agent ignores it and trains with plain SGD."""
    momentum: float = 0.9
    """momentum: the velocity's decay."""
    beta1: float = 0.9
    """adam: the first moment's decay."""
    beta2: float = 0.999
    """adam: the second moment's decay."""
    weight_decay: float = 0.0
    """L2 on the gradient for sgd and momentum, decoupled (AdamW) for adam."""
    score_noise: float = 0.0
    """evaluate: the std of the Gaussian noise added to each count of ``score_hist``."""
    bucket: BucketSpec | None = None
    """train in a secure bucket: the delta goes out masked (``SecAggInput``), never alone."""

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError("epochs and batch_size must be positive")
        if self.lr < 0 or self.mu < 0 or self.noise_multiplier < 0:
            raise ValueError("lr, mu and noise_multiplier must be >= 0")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError("clip_norm must be positive")
        if not all(0 <= b < 1 for b in (self.momentum, self.beta1, self.beta2)):
            raise ValueError("momentum, beta1 and beta2 must be in [0, 1)")
        if not 0 <= self.weight_decay < float("inf"):
            raise ValueError("weight_decay must be a finite number >= 0")
        if not 0 <= self.score_noise < float("inf"):
            raise ValueError("score_noise must be a finite number >= 0")


@dataclass(frozen=True, slots=True)
class Defer(Message):
    """Pace steering: not now, come back after ``retry_after_ms``."""

    TYPE: ClassVar[str] = "defer"
    retry_after_ms: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AckEntry:
    seq: int
    outcome: AckOutcome
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Ack(Message):
    TYPE: ClassVar[str] = "ack"
    entries: list[AckEntry]


@dataclass(frozen=True, slots=True)
class Control(Message):
    TYPE: ClassVar[str] = "control"
    action: ControlAction
    reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelSnapshot(Message):
    """A full global model (retained on ``fl/{fed}/model``): graphs and float32 parameters."""

    TYPE: ClassVar[str] = "model"
    version: int
    params: list[EncodedTensor]
    params_sha256: bytes
    graphs: dict[str, bytes]
    """ONNX graphs by role (``train_step``, ``eval``, ``infer``), parameters as inputs."""
    arch_id: str = ""
    parent: int | None = None
    created_ms: int = 0
    stopped: bool = False
    """The federation has stopped: agents keep this model and go idle."""
    annex: ModelAnnex = field(default_factory=ModelAnnex)


@dataclass(frozen=True, slots=True)
class ModelDelta(Message):
    """Retained on ``fl/{fed}/model/delta``: XOR of float32 bits from ``base_version``."""

    TYPE: ClassVar[str] = "model_delta"
    version: int
    base_version: int
    xor: list[EncodedTensor]
    params_sha256: bytes
    """Digest of the parameters after applying the delta (checked by the agent)."""
    arch_id: str = ""
    created_ms: int = 0
    stopped: bool = False
    annex: ModelAnnex = field(default_factory=ModelAnnex)


@dataclass(frozen=True, slots=True)
class ChunkManifest(Message):
    """Stands in for a model message too large for one MQTT packet: the body of the real
    message is split into retained, hash-addressed chunks on ``{topic}/chunks/{sha}``."""

    TYPE: ClassVar[str] = "chunked"
    inner_type: str
    version: int
    total_size: int
    sha256: bytes
    chunks: list[bytes]
    """SHA-256 of each chunk, in order."""


@dataclass(frozen=True, slots=True)
class Chunk(Message):
    TYPE: ClassVar[str] = "chunk"
    sha256: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class KeyAnnouncement(Message):
    """The orchestrator's key changes (retained on ``fl/{fed}/model/key``): signed by the old
    key, which vouches for the new one; ``proof`` is the new key's signature over the old public
    key (see :func:`schemas.signing.announcement_proof`). Devices pin ``new_public_key`` and accept
    the old key until they see a message signed by the new one, or ``retire_after_ms`` passes."""

    TYPE: ClassVar[str] = "orch_key"
    new_public_key: bytes
    old_public_key: bytes
    proof: bytes
    not_before_ms: int
    """From when the orchestrator signs with the new key."""
    retire_after_ms: int
    """When the old key is retired: devices refuse it (and this announcement) from then on."""
    generation: int = 1
    """How many rotations the orchestrator has made (1 for the first)."""

    def __post_init__(self) -> None:
        if len(self.new_public_key) != 32 or len(self.old_public_key) != 32:
            raise ValueError("public keys must be 32 bytes")
        if len(self.proof) != 64:
            raise ValueError("proof must be 64 bytes")
        if self.new_public_key == self.old_public_key:
            raise ValueError("the new key must differ from the old one")
        if self.not_before_ms < 0 or self.retire_after_ms < self.not_before_ms:
            raise ValueError("retire_after_ms must be >= not_before_ms >= 0")
        if self.generation < 1:
            raise ValueError("generation must be >= 1")


# -- operators --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetSummary(Message):
    """Retained on ``fl/{fed}/fleet`` for field tools that reach only the broker."""

    TYPE: ClassVar[str] = "fleet"
    ts_ms: int
    federation: dict[str, Any]
    devices: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class OperatorRequest(Message):
    TYPE: ClassVar[str] = "ops_request"
    request_id: str
    command: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OperatorResponse(Message):
    TYPE: ClassVar[str] = "ops_response"
    request_id: str
    ok: bool
    result: Any = None
    error: str = ""


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Enroll, KeyRotation, PasswordReceipt, Status, Update, EvalReport, Enrolled, Task,
        Defer, Ack, Control, ModelSnapshot, ModelDelta, ChunkManifest, Chunk, KeyAnnouncement,
        FleetSummary,
        OperatorRequest, OperatorResponse,
    )
}

from .secagg.wire import STAGE_TYPES  # noqa: E402  (the stages subclass Message, above)

MESSAGE_TYPES.update({cls.TYPE: cls for cls in STAGE_TYPES})
