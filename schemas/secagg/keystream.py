"""A ChaCha20 keystream from libsodium, expanded into integers mod 2^b and uniform floats.

pynacl does not export ``crypto_stream_chacha20``; the IETF ChaCha20-Poly1305 AEAD encrypts
with ChaCha20 starting at block counter 1, so its ciphertext of zero bytes, minus the 16-byte
tag, is exactly that keystream (RFC 8439 §2.8). Seeds are bound to a ``domain`` by a keyed
BLAKE2b subkey, and long outputs are produced in 1 MiB chunks, chunk ``i`` under nonce ``i``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_ABYTES,
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_aead_chacha20poly1305_ietf_KEYBYTES,
    crypto_aead_chacha20poly1305_ietf_NPUBBYTES,
)
from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from .errors import Problem, SecAggError

SEED_BYTES = 32
MAX_BITS = 32
CHUNK_BYTES = 1 << 20
_MAX_ITEMS = 1 << 31  # 8 GiB of keystream: far beyond any model, and inside the nonce space
_ZEROS = bytes(CHUNK_BYTES)
_PERSON = b"fedmq:secagg:ks"


def chacha20_keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    """``length`` bytes of the ChaCha20 (RFC 8439) keystream for ``key``/``nonce``, from block
    counter 1. At most one chunk (1 MiB); :func:`expand_bytes` goes further."""
    if len(key) != crypto_aead_chacha20poly1305_ietf_KEYBYTES:
        raise SecAggError(Problem.BAD_PARAMETER, f"a ChaCha20 key is 32 bytes, not {len(key)}")
    if len(nonce) != crypto_aead_chacha20poly1305_ietf_NPUBBYTES:
        raise SecAggError(Problem.BAD_PARAMETER, f"a ChaCha20 nonce is 12 bytes, not {len(nonce)}")
    if not 0 <= length <= CHUNK_BYTES:
        raise SecAggError(Problem.BAD_PARAMETER, f"keystream length {length} out of range")
    zeros = _ZEROS if length == CHUNK_BYTES else bytes(length)
    out = crypto_aead_chacha20poly1305_ietf_encrypt(zeros, None, nonce, key)
    return out[: len(out) - crypto_aead_chacha20poly1305_ietf_ABYTES]


def subkey(seed: bytes, domain: bytes) -> bytes:
    """The ChaCha20 key for ``seed`` in ``domain``: BLAKE2b keyed with the seed."""
    if len(seed) != SEED_BYTES:
        raise SecAggError(Problem.BAD_PARAMETER, f"a seed is 32 bytes, not {len(seed)}")
    return blake2b(domain, digest_size=SEED_BYTES, key=seed, person=_PERSON, encoder=RawEncoder)


def expand_bytes(seed: bytes, domain: bytes, length: int) -> bytes:
    """``length`` pseudorandom bytes, a deterministic function of ``seed`` and ``domain``."""
    key = subkey(seed, domain)
    full, rest = divmod(length, CHUNK_BYTES)
    parts = [chacha20_keystream(key, i.to_bytes(12, "little"), CHUNK_BYTES) for i in range(full)]
    if rest:
        parts.append(chacha20_keystream(key, full.to_bytes(12, "little"), rest))
    return b"".join(parts)


def _check_count(n: int) -> None:
    if not 0 <= n <= _MAX_ITEMS:
        raise SecAggError(Problem.BAD_PARAMETER, f"cannot expand {n} values")


def expand_ring(seed: bytes, domain: bytes, n: int, bits: int) -> npt.NDArray[np.uint32]:
    """``n`` integers uniform in ``[0, 2^bits)`` (exactly: 2^bits divides 2^32), as uint32."""
    if not 1 <= bits <= MAX_BITS:
        raise SecAggError(Problem.BAD_PARAMETER, f"bit width {bits} not in 1..{MAX_BITS}")
    _check_count(n)
    words = np.frombuffer(expand_bytes(seed, domain, 4 * n), dtype="<u4").astype(np.uint32)
    if bits < MAX_BITS:
        words &= np.uint32((1 << bits) - 1)
    return words


def expand_uniform(seed: bytes, domain: bytes, n: int) -> npt.NDArray[np.float64]:
    """``n`` floats uniform on ``[0, 1)`` with 53 random bits each."""
    _check_count(n)
    words = np.frombuffer(expand_bytes(seed, domain, 8 * n), dtype="<u8")
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
