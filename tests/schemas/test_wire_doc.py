"""docs/wire-protocol.md cannot drift from the code: every message type, field (with its type
and default), nested value type, enum value, reason, codec, limit and topic appears in it.

When this fails after a change to ``schemas/``, update the doc: the assertion message shows the
table row the code now implies.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from enum import Enum
from typing import Any

import pytest

from schemas import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    AckEntry,
    AckOutcome,
    AgentState,
    Bundle,
    Codec,
    CodecSpec,
    ControlAction,
    DownKind,
    EncodedTensor,
    EnrollStatus,
    Header,
    Limits,
    Optimizer,
    Reason,
    TaskAction,
    Thermal,
    Topics,
    UpdateBatch,
    UpKind,
    Verdict,
)
from schemas._convert import to_wire
from schemas.annex import FeatureStats, ModelAnnex
from schemas.secagg.spec import BucketMember, BucketSpec
from schemas.secagg.wire import RevealedShare
from tests.support.paths import REPO

DOC = REPO / "docs" / "wire-protocol.md"
VALUE_TYPES: list[type] = [AckEntry, CodecSpec, EncodedTensor, Header, UpdateBatch, Bundle,
                           Limits, ModelAnnex, FeatureStats, BucketSpec, BucketMember,
                           RevealedShare]
ENUMS: list[type[Enum]] = [AgentState, Thermal, AckOutcome, EnrollStatus, TaskAction,
                           ControlAction, Codec, UpKind, DownKind, Verdict, Optimizer]


def _render_default(f: dataclasses.Field[Any]) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    value = to_wire(value)
    if isinstance(value, bytes):
        return f"`{value!r}`"
    if isinstance(value, float) and math.isnan(value):
        return "`NaN`"
    return f"`{json.dumps(value)}`"


def field_rows(cls: type) -> dict[str, str]:
    """The table row (its first three cells) the doc must hold for each field of ``cls``."""
    rows = {}
    for f in dataclasses.fields(cls):
        kind = str(f.type).replace("|", "\\|")
        rows[f.name] = f"| `{f.name}` | `{kind}` | {_render_default(f)} |"
    return rows


def _sections(text: str) -> dict[str, str]:
    """Heading line → the text under it up to the next heading."""
    out: dict[str, str] = {}
    heading, lines = "", []
    for line in text.splitlines():
        if line.startswith("#"):
            out[heading] = "\n".join(lines)
            heading, lines = line, []
        else:
            lines.append(line)
    out[heading] = "\n".join(lines)
    return out


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _section_for(doc: str, cls: type) -> tuple[str, str]:
    matches = [(heading, body) for heading, body in _sections(doc).items()
               if f"`{cls.__name__}`" in heading]
    assert len(matches) == 1, f"wire-protocol.md needs one heading naming `{cls.__name__}`"
    return matches[0]


@pytest.mark.parametrize("cls", [*MESSAGE_TYPES.values(), *VALUE_TYPES],
                         ids=lambda c: c.__name__)
def test_every_type_has_a_section_with_exactly_its_fields(doc: str, cls: type) -> None:
    heading, section = _section_for(doc, cls)
    if tag := getattr(cls, "TYPE", None):
        assert f"`{tag}`" in heading, f"the heading of `{cls.__name__}` must name `{tag}`"
    rows = field_rows(cls)
    documented = {m.group(1) for m in re.finditer(r"^\| `(\w+)` \|", section, re.MULTILINE)}
    assert documented == set(rows), f"`{cls.__name__}` fields differ: doc {sorted(documented)}"
    lines = [line.strip() for line in section.splitlines()]
    for row in rows.values():
        assert any(line.startswith(row) for line in lines), f"expected a row starting {row}"


def test_every_enum_value_reason_and_verdict_is_named(doc: str) -> None:
    for enum in ENUMS:
        for member in enum:
            assert f"`{member.value}`" in doc, f"{enum.__name__}.{member.name}"
    reasons = _section_for_heading(doc, "Reason")
    for reason in Reason:
        assert re.search(rf"^\| `{reason.value}` \|", reasons, re.MULTILINE), reason.value


def _section_for_heading(doc: str, word: str) -> str:
    matches = [body for heading, body in _sections(doc).items() if word in heading]
    assert matches, f"no heading with {word!r}"
    return "\n".join(matches)


def test_every_topic_and_the_envelope_layout_are_documented(doc: str) -> None:
    t = Topics("FED")
    for topic in (t.model, t.model_delta, t.model_key, t.fleet):
        assert f"`{topic.replace('FED', '{fed}')}`" in doc
    for template in ("fl/{fed}/model/chunks/{sha256hex}", "fl/{fed}/down/{dev}/{kind}",
                     "fl/{fed}/up/{dev}/{kind}", "fl/{fed}/ops/request/{op}",
                     "fl/{fed}/ops/reply/{op}"):
        assert f"`{template}`" in doc
    assert "msgpack([signed_bytes, signature])" in doc
    assert "{v, type, fed, sender, seq, ts_ms, enc, to, body}" in doc
    assert f"`v` = {PROTOCOL_VERSION}" in doc
