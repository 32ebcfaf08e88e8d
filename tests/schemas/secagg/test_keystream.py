"""The keystream is RFC 8439 ChaCha20 from counter 1, and expands seeds deterministically."""

from __future__ import annotations

import hashlib
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.secagg import SecAggError, chacha20_keystream, expand_bytes, expand_ring
from schemas.secagg.keystream import CHUNK_BYTES, expand_uniform, subkey

SUNSCREEN = (b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
             b"the future, sunscreen would be it.")


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    def rotl(v: int, n: int) -> int:
        return ((v << n) | (v >> (32 - n))) & 0xFFFFFFFF

    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 16)  # noqa: E702
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 12)  # noqa: E702
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = rotl(s[d] ^ s[a], 8)  # noqa: E702
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = rotl(s[b] ^ s[c], 7)  # noqa: E702


def reference_chacha20(key: bytes, nonce: bytes, counter: int, length: int) -> bytes:
    """RFC 8439 §2.3, written out from the spec: an implementation independent of libsodium."""
    out = b""
    while len(out) < length:
        init = [*struct.unpack("<4I", b"expand 32-byte k"), *struct.unpack("<8I", key),
                counter, *struct.unpack("<3I", nonce)]
        s = list(init)
        for _ in range(10):
            for q in ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                      (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)):
                _quarter(s, *q)
        out += struct.pack("<16I", *((x + y) & 0xFFFFFFFF for x, y in zip(s, init, strict=True)))
        counter += 1
    return out[:length]


def test_rfc8439_a1_vector_2_zero_key_counter_1() -> None:
    expected = bytes.fromhex(
        "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
        "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f")
    assert chacha20_keystream(bytes(32), bytes(12), 64) == expected
    assert reference_chacha20(bytes(32), bytes(12), 1, 64) == expected


def test_rfc8439_2_4_2_sunscreen_encryption() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000000000004a00000000")
    stream = chacha20_keystream(key, nonce, len(SUNSCREEN))
    ciphertext = bytes(p ^ k for p, k in zip(SUNSCREEN, stream, strict=True))
    assert ciphertext[:16] == bytes.fromhex("6e2e359a2568f98041ba0728dd0d6981")
    assert ciphertext[-2:] == bytes.fromhex("874d")
    assert stream == reference_chacha20(key, nonce, 1, len(SUNSCREEN))


def test_rfc8439_2_3_2_block() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a00000000")
    assert chacha20_keystream(key, nonce, 64)[:16] == bytes.fromhex(
        "10f1e7e4d13b5915500fdd1fa32071c4")


@settings(max_examples=25, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       length=st.integers(0, 300))
def test_libsodium_matches_the_reference(key: bytes, nonce: bytes, length: int) -> None:
    assert chacha20_keystream(key, nonce, length) == reference_chacha20(key, nonce, 1, length)


def test_chunks_continue_under_the_next_nonce() -> None:
    seed = bytes(range(32))
    long = expand_bytes(seed, b"d", CHUNK_BYTES + 100)
    key = subkey(seed, b"d")
    assert long[:CHUNK_BYTES] == chacha20_keystream(key, bytes(12), CHUNK_BYTES)
    assert long[CHUNK_BYTES:] == chacha20_keystream(key, (1).to_bytes(12, "little"), 100)
    assert expand_bytes(seed, b"d", 100) == long[:100]


def test_expand_ring_known_answer() -> None:
    """Pinned, and rebuilt from the stdlib's BLAKE2b and the reference ChaCha20."""
    seed = bytes(range(32))
    values = expand_ring(seed, b"fedmq-test", 4, 16)
    assert values.dtype == np.uint32
    assert values.tolist() == [55676, 30667, 10300, 6929]
    key = hashlib.blake2b(b"fedmq-test", digest_size=32, key=seed,
                          person=b"fedmq:secagg:ks").digest()
    words = struct.unpack("<4I", reference_chacha20(key, bytes(12), 1, 16))
    assert [w & 0xFFFF for w in words] == values.tolist()
    assert expand_ring(seed, b"fedmq-test", 4, 32).tolist() == list(words)


def test_domains_and_seeds_separate() -> None:
    a = expand_ring(bytes(32), b"self", 64, 32)
    assert not np.array_equal(a, expand_ring(bytes(32), b"pair", 64, 32))
    assert not np.array_equal(a, expand_ring(bytes(31) + b"\x01", b"self", 64, 32))
    assert np.array_equal(a, expand_ring(bytes(32), b"self", 64, 32))


def test_a_million_coordinates_are_fast_and_uniform() -> None:
    start = time.perf_counter()
    values = expand_ring(bytes(range(32)), b"big", 1_000_000, 12)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5
    assert int(values.max()) < 1 << 12
    counts = np.bincount(values, minlength=1 << 12)
    assert counts.min() > 150 and counts.max() < 350  # mean 244
    uniform = expand_uniform(bytes(range(32)), b"big", 100_000)
    assert 0.0 <= uniform.min() and uniform.max() < 1.0
    assert abs(uniform.mean() - 0.5) < 0.01


@pytest.mark.parametrize(("seed", "bits", "n"), [
    (bytes(31), 16, 1), (bytes(32), 0, 1), (bytes(32), 33, 1), (bytes(32), 16, -1)])
def test_bad_parameters_are_refused(seed: bytes, bits: int, n: int) -> None:
    with pytest.raises(SecAggError):
        expand_ring(seed, b"d", n, bits)


def test_bad_key_nonce_length_are_refused() -> None:
    for key, nonce, length in [(bytes(31), bytes(12), 1), (bytes(32), bytes(8), 1),
                               (bytes(32), bytes(12), CHUNK_BYTES + 1)]:
        with pytest.raises(SecAggError):
            chacha20_keystream(key, nonce, length)
