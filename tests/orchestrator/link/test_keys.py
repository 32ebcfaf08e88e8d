"""The orchestrator's key file: created private, read back, refused when open or malformed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.link.keys import KeyFileError, load_key, load_or_create_key


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "orchestrator.key"
    key = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert bytes(load_or_create_key(path)) == bytes(key)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)
    os.chmod(path, 0o600)
    path.write_text("not hex\n")
    with pytest.raises(KeyFileError, match="32-byte hex seed"):
        load_key(path)
