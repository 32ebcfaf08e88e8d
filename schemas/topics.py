"""Topic names: builders and a strict parser (one place knows the layout).

=============================== ========== =====================================
``fl/{fed}/model``              orch → all retained full snapshot
``fl/{fed}/model/delta``        orch → all retained lossless delta
``fl/{fed}/model/chunks/{sha}`` orch → all retained chunk of an oversized model message
``fl/{fed}/model/key``          orch → all retained announcement of the orchestrator's new key
``fl/{fed}/model/key/{gen}``    orch → all retained earlier announcement (generation ``gen``)
``fl/{fed}/down/{dev}/{kind}``  orch → dev  task, ack, control, enrolled, secagg
``fl/{fed}/up/{dev}/{kind}``    dev → orch  enroll, status (retained), updates, eval,
                                           rotate
``fl/{fed}/fleet``              orch → ops  retained fleet summary
``fl/{fed}/ops/request/{op}``   op → orch   signed operator commands
``fl/{fed}/ops/reply/{op}``     orch → op   replies (also named as MQTT 5 response topic)
=============================== ========== =====================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .errors import DecodeError, Reason

ROOT = "fl"
ORCHESTRATOR_SENDER = "orchestrator"
"""The ``sender`` of everything the orchestrator signs (devices check it on every message)."""
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA_HEX = re.compile(r"^[0-9a-f]{64}$")
_GENERATION = re.compile(r"^[1-9][0-9]{0,8}$")


class UpKind(StrEnum):
    ENROLL = "enroll"
    STATUS = "status"
    UPDATES = "updates"
    EVAL = "eval"
    ROTATE = "rotate"


class DownKind(StrEnum):
    TASK = "task"
    ACK = "ack"
    CONTROL = "control"
    ENROLLED = "enrolled"
    SECAGG = "secagg"


_UP_KINDS = frozenset(k.value for k in UpKind)
_DOWN_KINDS = frozenset(k.value for k in DownKind)


def valid_id(value: str) -> bool:
    """Federation and device ids: 1–64 of ``[A-Za-z0-9_.-]``, no MQTT wildcards or slashes."""
    return bool(_ID.fullmatch(value))  # not match: '$' also matches before a final newline


def check_id(value: str, what: str = "id") -> str:
    if not valid_id(value):
        raise ValueError(f"invalid {what} {value!r}: use 1-64 letters, digits, '_', '.', '-'")
    return value


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builders for one federation."""

    fed: str

    def __post_init__(self) -> None:
        check_id(self.fed, "federation id")

    @property
    def model(self) -> str:
        return f"{ROOT}/{self.fed}/model"

    @property
    def model_delta(self) -> str:
        return f"{ROOT}/{self.fed}/model/delta"

    @property
    def model_key(self) -> str:
        """The retained ``KeyAnnouncement`` (under ``model/`` so every reader of the model,
        device or operator, already subscribes to and may read it)."""
        return f"{ROOT}/{self.fed}/model/key"

    def model_key_earlier(self, generation: int) -> str:
        """An earlier announcement, still retained so a device that missed more than one
        rotation can verify the one signed by the key it pins (and learn it must
        re-enroll)."""
        if generation < 1:
            raise ValueError(f"generation must be >= 1, got {generation}")
        return f"{ROOT}/{self.fed}/model/key/{generation}"

    @property
    def model_all(self) -> str:
        return f"{ROOT}/{self.fed}/model/#"

    def chunk(self, sha_hex: str) -> str:
        return f"{ROOT}/{self.fed}/model/chunks/{sha_hex}"

    def down(self, device: str, kind: DownKind) -> str:
        return f"{ROOT}/{self.fed}/down/{check_id(device, 'device id')}/{kind.value}"

    def down_all(self, device: str) -> str:
        return f"{ROOT}/{self.fed}/down/{check_id(device, 'device id')}/#"

    def up(self, device: str, kind: UpKind) -> str:
        return f"{ROOT}/{self.fed}/up/{check_id(device, 'device id')}/{kind.value}"

    @property
    def up_all(self) -> str:
        return f"{ROOT}/{self.fed}/up/+/+"

    @property
    def fleet(self) -> str:
        return f"{ROOT}/{self.fed}/fleet"

    def ops_request(self, operator: str) -> str:
        """Where ``operator`` publishes its requests: the broker lets each account write only
        its own, so the topic names the sender before anything is read."""
        return f"{ROOT}/{self.fed}/ops/request/{check_id(operator, 'operator id')}"

    @property
    def ops_requests(self) -> str:
        """Every operator's requests (the orchestrator's subscription)."""
        return f"{ROOT}/{self.fed}/ops/request/+"

    @property
    def ops_reply_prefix(self) -> str:
        """What every reply topic starts with (``ops_reply(op)`` is this plus ``op``)."""
        return f"{ROOT}/{self.fed}/ops/reply/"

    def ops_reply(self, operator: str) -> str:
        return f"{ROOT}/{self.fed}/ops/reply/{check_id(operator, 'operator id')}"

    @property
    def orchestrator_client_id(self) -> str:
        """The orchestrator's MQTT client id: fixed per federation, so its session (with the
        QoS 1 messages queued while it was down) is resumed on every reconnect."""
        return f"fedmq-orchestrator-{self.fed}"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    fed: str
    area: str
    """``up``, ``down``, ``model``, ``fleet`` or ``ops``."""
    device: str | None = None
    kind: str | None = None


def parse_topic(topic: str) -> ParsedTopic:
    """Parse a concrete topic (no wildcards); anything else is ``bad_topic``."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT or not valid_id(parts[1]):
        raise DecodeError(Reason.BAD_TOPIC, f"not a fedmq topic: {topic[:200]!r}")
    fed, area, rest = parts[1], parts[2], parts[3:]
    kinds = _UP_KINDS if area == "up" else _DOWN_KINDS if area == "down" else None
    if kinds is not None and len(rest) == 2 and valid_id(rest[0]) and rest[1] in kinds:
        return ParsedTopic(fed, area, rest[0], rest[1])
    if area == "model" and (rest == [] or rest == ["delta"] or rest == ["key"]):
        return ParsedTopic(fed, area, None, rest[0] if rest else "snapshot")
    if area == "model" and len(rest) == 2 and rest[0] == "key" and _GENERATION.fullmatch(rest[1]):
        return ParsedTopic(fed, area, None, "earlier_key")
    if area == "model" and len(rest) == 2 and rest[0] == "chunks" and _SHA_HEX.fullmatch(rest[1]):
        return ParsedTopic(fed, area, None, "chunk")
    if area == "fleet" and not rest:
        return ParsedTopic(fed, area)
    if area == "ops" and len(rest) == 2 and rest[0] == "request" and valid_id(rest[1]):
        return ParsedTopic(fed, area, rest[1], "request")
    if area == "ops" and len(rest) == 2 and rest[0] == "reply" and valid_id(rest[1]):
        return ParsedTopic(fed, area, rest[1], "reply")
    raise DecodeError(Reason.BAD_TOPIC, f"not a fedmq topic: {topic[:200]!r}")
