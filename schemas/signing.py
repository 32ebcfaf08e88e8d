"""Key material helpers (pure: bytes in, bytes out; files are the callers' business)."""

from __future__ import annotations

import hashlib
import hmac

from nacl.bindings import crypto_box_SEALBYTES
from nacl.exceptions import CryptoError
from nacl.public import SealedBox
from nacl.signing import SigningKey, VerifyKey

ENROLL_SECRET_BYTES = 32


def new_signing_key() -> SigningKey:
    return SigningKey.generate()


def enroll_mac(secret: bytes, *, fed: str, device_id: str, public_key: bytes) -> bytes:
    """HMAC-SHA256 binding a device's new public key to its one-time enrollment secret."""
    msg = b"fedmq-enroll\x00" + fed.encode() + b"\x00" + device_id.encode() + b"\x00" + public_key
    return hmac.new(secret, msg, hashlib.sha256).digest()


def check_enroll_mac(secret: bytes, mac: bytes, *, fed: str, device_id: str,
                     public_key: bytes) -> bool:
    expected = enroll_mac(secret, fed=fed, device_id=device_id, public_key=public_key)
    return hmac.compare_digest(expected, mac)


def rotation_proof(new_key: SigningKey, old_public_key: bytes) -> bytes:
    """The new key signs the old public key: proof that the device holds the new key."""
    return new_key.sign(b"fedmq-rotate\x00" + old_public_key).signature


def check_rotation_proof(new_public_key: bytes, proof: bytes, old_public_key: bytes) -> bool:
    try:
        VerifyKey(new_public_key).verify(b"fedmq-rotate\x00" + old_public_key, proof)
    except Exception:  # BadSignatureError, or a malformed key/proof
        return False
    return True


def _announcement_text(fed: str, old_public_key: bytes) -> bytes:
    return b"fedmq-orch-key\x00" + fed.encode() + b"\x00" + old_public_key


def announcement_proof(new_key: SigningKey, *, fed: str, old_public_key: bytes) -> bytes:
    """The orchestrator's new key signs the old public key (bound to the federation): proof
    that whoever announced the new key holds it."""
    return new_key.sign(_announcement_text(fed, old_public_key)).signature


def check_announcement_proof(new_public_key: bytes, proof: bytes, *, fed: str,
                             old_public_key: bytes) -> bool:
    try:
        VerifyKey(new_public_key).verify(_announcement_text(fed, old_public_key), proof)
    except Exception:  # BadSignatureError, or a malformed key/proof
        return False
    return True


MAX_PASSWORD_BYTES = 256


def seal_password(password: str, device_key: bytes) -> bytes:
    """``password`` sealed (anonymous box) to the device whose Ed25519 public key is
    ``device_key``: only the holder of that device key can open it."""
    box = SealedBox(VerifyKey(device_key).to_curve25519_public_key())
    return box.encrypt(password.encode())


def open_password(sealed: bytes, key: SigningKey) -> str | None:
    """The password in ``sealed`` if it was sealed to ``key`` (and is a sane password)."""
    if len(sealed) > MAX_PASSWORD_BYTES + crypto_box_SEALBYTES:
        return None  # bounded before any work
    try:
        raw = SealedBox(key.to_curve25519_private_key()).decrypt(sealed)
        password = raw.decode()
    except (CryptoError, UnicodeDecodeError):
        return None
    return password if 0 < len(raw) <= MAX_PASSWORD_BYTES and password.isprintable() else None


def password_digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


def key_id(public_key: bytes) -> str:
    """A short printable fingerprint for logs and the CLI."""
    return hashlib.sha256(public_key).hexdigest()[:16]
