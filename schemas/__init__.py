"""fedmq's wire protocol: messages, the signed envelope, replay windows, tensor codecs, topics.

Pure: no I/O. The only place that knows the bytes on the wire (see docs/wire-protocol.md).
"""

from .bundle import Bundle
from .compress import compress, decompress
from .envelope import (
    Header,
    Opened,
    check_header,
    decode,
    decode_body,
    message_type,
    open_enroll,
    pack,
    pack_batch,
    resign,
    seal_key,
    split,
    unpack_batch,
    unseal_key,
    verify,
)
from .errors import (
    DecodeError,
    EncodeError,
    FedmqError,
    Reason,
    SignatureError,
    ValidationError,
)
from .limits import DEFAULT_LIMITS, Limits
from .messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Ack,
    AckEntry,
    AckOutcome,
    AgentState,
    Chunk,
    ChunkManifest,
    Control,
    ControlAction,
    Defer,
    Enroll,
    Enrolled,
    EnrollStatus,
    EvalReport,
    FleetSummary,
    KeyRotation,
    Message,
    ModelDelta,
    ModelSnapshot,
    OperatorRequest,
    OperatorResponse,
    Optimizer,
    PasswordReceipt,
    Status,
    Task,
    TaskAction,
    Thermal,
    Update,
    UpdateBatch,
)
from .replay import ReplayWindow, Verdict
from .signing import (
    check_enroll_mac,
    check_rotation_proof,
    enroll_mac,
    key_id,
    new_signing_key,
    open_password,
    password_digest,
    rotation_proof,
    seal_password,
)
from .tensors import (
    Codec,
    CodecSpec,
    EncodedTensor,
    ErrorFeedback,
    Params,
    apply_xor_delta,
    decode_params,
    decode_tensor,
    encode_params,
    encode_tensor,
    params_digest,
    xor_delta,
)
from .topics import (
    ORCHESTRATOR_SENDER,
    DownKind,
    ParsedTopic,
    Topics,
    UpKind,
    check_id,
    parse_topic,
    valid_id,
)

__all__ = [
    "DEFAULT_LIMITS", "MESSAGE_TYPES", "ORCHESTRATOR_SENDER", "PROTOCOL_VERSION", "Ack",
    "AckEntry", "AckOutcome", "AgentState", "Bundle", "Chunk", "ChunkManifest", "Codec",
    "CodecSpec", "Control", "ControlAction", "DecodeError", "Defer", "DownKind", "EncodeError",
    "EncodedTensor", "Enroll", "EnrollStatus", "Enrolled", "ErrorFeedback", "EvalReport",
    "FedmqError", "FleetSummary", "Header", "KeyRotation", "Limits", "Message", "ModelDelta",
    "ModelSnapshot", "Opened", "OperatorRequest", "OperatorResponse", "Optimizer", "Params",
    "ParsedTopic", "PasswordReceipt", "Reason", "ReplayWindow", "SignatureError", "Status", "Task",
    "TaskAction", "Thermal", "Topics", "UpKind", "Update", "UpdateBatch", "ValidationError",
    "Verdict", "apply_xor_delta", "check_enroll_mac", "check_header", "check_id",
    "check_rotation_proof", "compress", "decode", "decode_body", "decode_params", "decode_tensor",
    "decompress", "encode_params", "encode_tensor", "enroll_mac", "key_id", "message_type",
    "new_signing_key", "open_enroll", "open_password", "pack", "pack_batch", "params_digest",
    "parse_topic", "password_digest", "resign", "rotation_proof", "seal_key", "seal_password",
    "split", "unpack_batch", "unseal_key", "valid_id", "verify", "xor_delta",
]
