"""Mosquitto 2 password hashes and password files (stdlib only).

Mosquitto 2 stores ``user:$7$<iterations>$<base64 salt>$<base64 hash>`` lines, where the hash
is PBKDF2-HMAC-SHA512 of the password with a 12-byte salt, 64 bytes long; ``mosquitto_passwd``
uses 101 iterations.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .errors import CredentialError

SALT_BYTES = 12
HASH_BYTES = 64
DEFAULT_ITERATIONS = 101
# Mosquitto 2.0 refuses %u ACL substitution for user names holding MQTT wildcards or '/',
# and ':' ends the name in the password file.
_FORBIDDEN_IN_USERNAME = frozenset(":+#/")
_MAX_FIELD_BYTES = 65535  # MQTT string length limit


def validate_username(name: str) -> str:
    """Return ``name`` if it can be a Mosquitto user name usable in ``%u`` ACL patterns."""
    if not name:
        raise CredentialError("user name is empty")
    bad = sorted({c for c in name if c in _FORBIDDEN_IN_USERNAME or not c.isprintable()
                  or c.isspace()})
    if bad:
        raise CredentialError(f"user name {name!r} contains forbidden characters {bad!r}")
    if len(name.encode()) > _MAX_FIELD_BYTES:
        raise CredentialError("user name is longer than 65535 bytes")
    return name


def _validate_password(password: str) -> None:
    if not password:
        raise CredentialError("password is empty")
    if len(password.encode()) > _MAX_FIELD_BYTES:
        raise CredentialError("password is longer than 65535 bytes")


def generate_password() -> str:
    """A random password with 192 bits of entropy, safe to pass on a command line."""
    return secrets.token_urlsafe(24)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """Hash ``password`` in Mosquitto 2's ``$7$`` PBKDF2-SHA512 format."""
    _validate_password(password)
    if iterations < 1:
        raise CredentialError(f"iterations must be positive, got {iterations}")
    if salt is None:
        salt = os.urandom(SALT_BYTES)
    if not salt:
        raise CredentialError("salt is empty")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (as written by this module or mosquitto)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "7":
        raise CredentialError(f"not a Mosquitto $7$ password hash: {encoded[:20]!r}")
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise CredentialError(f"malformed $7$ password hash: {exc}") from None
    if iterations < 1 or not salt or not expected:
        raise CredentialError("malformed $7$ password hash")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


class PasswordFile:
    """A Mosquitto password file, rewritten atomically with mode 0600.

    Lines that are not the entry being changed (other users, comments, blank lines) are kept
    exactly as they are. Each method reads the file afresh, so several writers in turn are
    fine; concurrent writers need their own lock.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)

    @property
    def path(self) -> Path:
        return self._path

    def exists(self) -> bool:
        return self._path.is_file()

    def users(self) -> list[str]:
        """User names in file order."""
        return [user for user, _ in self._entries() if user is not None]

    def hash_of(self, user: str) -> str | None:
        """The stored hash of ``user``, or None if absent."""
        for line_user, line in self._entries():
            if line_user == user:
                return line.split(":", 1)[1]
        return None

    def verify(self, user: str, password: str) -> bool:
        """Whether ``user`` exists and ``password`` is its password."""
        encoded = self.hash_of(user)
        return encoded is not None and verify_password(password, encoded)

    def set(self, user: str, password: str, *, iterations: int = DEFAULT_ITERATIONS) -> None:
        """Add ``user`` or replace its password; creates the file if it does not exist."""
        self.set_many({user: password}, iterations=iterations)

    def set_many(
        self, users: Mapping[str, str], *, iterations: int = DEFAULT_ITERATIONS
    ) -> None:
        """Add or update several users with one rewrite of the file."""
        new_lines = {
            validate_username(user): f"{user}:{hash_password(password, iterations=iterations)}"
            for user, password in users.items()
        }
        lines: list[str] = []
        written: set[str] = set()
        for line_user, line in self._entries(missing_ok=True):
            if line_user is not None and line_user in new_lines:
                if line_user not in written:  # drop duplicate entries of the same user
                    lines.append(new_lines[line_user])
                    written.add(line_user)
                continue
            lines.append(line)
        lines += [line for user, line in new_lines.items() if user not in written]
        self._write(lines)

    def remove(self, user: str) -> bool:
        """Remove ``user``; False if it was not there (the file is then left untouched)."""
        entries = self._entries()
        kept = [line for line_user, line in entries if line_user != user]
        if len(kept) == len(entries):
            return False
        self._write(kept)
        return True

    @property
    def suspended_path(self) -> Path:
        """Where suspended entries wait (beside the file; Mosquitto never reads it)."""
        return self._path.with_name(self._path.name + ".suspended")

    def suspended(self) -> list[str]:
        """Users whose login is suspended, in file order."""
        return [user for user, _ in self._side()._entries(missing_ok=True) if user is not None]

    def suspend(self, user: str) -> bool:
        """Move ``user``'s entry to the side file: the broker refuses its logins (after a
        reload) until :meth:`restore`, and its password need not be re-issued. False if
        ``user`` has no entry. The side file is written first, so a crash between the two
        writes leaves the login usable, never lost."""
        line = next((raw for name, raw in self._entries() if name == user), None)
        if line is None:
            return False
        side = self._side()
        kept = [raw for name, raw in side._entries(missing_ok=True) if name != user]
        side._write([*kept, line])
        self.remove(user)
        return True

    def restore(self, user: str) -> bool:
        """Put a suspended ``user``'s entry back; False if it was not suspended."""
        side = self._side()
        entries = side._entries(missing_ok=True)
        line = next((raw for name, raw in entries if name == user), None)
        if line is None:
            return False
        others = [raw for name, raw in self._entries(missing_ok=True) if name != user]
        self._write([*others, line])
        side._write([raw for name, raw in entries if name != user])
        return True

    def _side(self) -> PasswordFile:
        return PasswordFile(self.suspended_path)  # the same format, never given to Mosquitto

    def _entries(self, *, missing_ok: bool = False) -> list[tuple[str | None, str]]:
        """(user or None for non-entry lines, raw line) for every line of the file."""
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if missing_ok:
                return []
            raise CredentialError(f"password file {self._path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialError(f"cannot read password file {self._path}: {exc}") from None
        entries: list[tuple[str | None, str]] = []
        for line in text.splitlines():
            user, sep, _ = line.partition(":")
            is_entry = bool(sep) and bool(user) and not line.lstrip().startswith("#")
            entries.append((user if is_entry else None, line))
        return entries

    def _write(self, lines: list[str]) -> None:
        directory = self._path.parent
        if not directory.is_dir():
            raise CredentialError(f"directory {directory} does not exist")
        data = "".join(line + "\n" for line in lines).encode()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", dir=directory)
        except OSError as exc:
            raise CredentialError(f"cannot write in {directory}: {exc}") from None
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path)
            # Make the rename itself durable.
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise CredentialError(f"cannot write password file {self._path}: {exc}") from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
