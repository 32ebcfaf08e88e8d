"""The orchestrator's Ed25519 identity key, kept in one 0600 file (hex seed).

Everything the orchestrator publishes is signed with it; devices pin its public half from their
bundle and seal update bodies to its Curve25519 twin.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from nacl.signing import SigningKey

from orchestrator.errors import OrchestratorError

__all__ = ["KeyFileError", "create_key", "load_key", "load_or_create_key", "public_key_hex"]

_SEED_BYTES = 32


class KeyFileError(OrchestratorError):
    """The key file is unreadable, malformed or readable by others."""


def load_or_create_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load the key at ``path``, creating it (mode 0600, parent directories 0700) if absent."""
    p = Path(path)
    if p.exists():
        return load_key(p)
    try:
        return create_key(p)
    except FileExistsError:
        return load_key(p)


def create_key(path: str | os.PathLike[str]) -> SigningKey:
    """A fresh key written durably to ``path`` (mode 0600, O_EXCL: two processes racing to
    create it cannot both win; the loser gets ``FileExistsError``)."""
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = SigningKey.generate()
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {p}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(bytes(key).hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    _sync_dir(p.parent)
    return key


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_key(path: str | os.PathLike[str]) -> SigningKey:
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"key file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {p}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {p} is accessible by other users "
                           f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != _SEED_BYTES:
        raise KeyFileError(f"key file {p} does not hold a 32-byte hex seed")
    return SigningKey(seed)


def public_key_hex(key: SigningKey) -> str:
    return bytes(key.verify_key).hex()
