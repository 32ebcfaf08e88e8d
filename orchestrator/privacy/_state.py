"""JSON encoding of saved privacy states (internal)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import PrivacyStateError

FORMAT = 1


def dump_json(kind: str, fields: Mapping[str, Any]) -> bytes:
    # repr-exact floats: a reloaded sampling rate equals the recorded one bit for bit
    return json.dumps({"kind": kind, "v": FORMAT, **fields}, sort_keys=True,
                      allow_nan=False).encode()


def load_json(state: bytes, kind: str) -> dict[str, Any]:
    """Decode a saved JSON state of ``kind``, raising :class:`PrivacyStateError`."""
    try:
        raw = json.loads(bytes(state).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrivacyStateError(f"unreadable {kind} state: {exc}") from None
    if not isinstance(raw, dict) or raw.get("kind") != kind:
        found = raw.get("kind") if isinstance(raw, dict) else None
        raise PrivacyStateError(f"state is a {found!r}, not a {kind!r}")
    if raw.get("v") != FORMAT:
        raise PrivacyStateError(f"{kind} state has unsupported format {raw.get('v')!r}")
    return raw
