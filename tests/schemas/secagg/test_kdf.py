"""Pair seeds: X25519 per RFC 7748, a BLAKE2b KDF bound to bucket and ordered pair, symmetric."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schemas.secagg import MaskKeyPair, Problem, SecAggError, pair_seed, public_key

# RFC 7748 §6.1
ALICE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
SEED = bytes.fromhex("852fe5fed5074525182da5c867a2399ce8d9ee669d4c506a590747ef19e760ee")


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def test_known_answer() -> None:
    assert public_key(ALICE) == ALICE_PUB and public_key(BOB) == BOB_PUB
    seed = pair_seed(ALICE, BOB_PUB, bucket="bucket-7", member="alice", peer="bob")
    assert seed == SEED
    # the construction, rebuilt with the stdlib: BLAKE2b keyed with the X25519 output
    message = b"".join(_field(v) for v in (b"bucket-7", b"alice", b"bob", ALICE_PUB, BOB_PUB))
    assert seed == hashlib.blake2b(message, digest_size=32, key=SHARED,
                                   person=b"fedmq:secagg:pm").digest()


def test_both_members_derive_the_same_seed() -> None:
    assert pair_seed(BOB, ALICE_PUB, bucket="bucket-7", member="bob", peer="alice") == SEED


@settings(max_examples=30, deadline=None)
@given(a=st.text(min_size=1, max_size=12), b=st.text(min_size=1, max_size=12),
       bucket=st.text(max_size=12))
def test_symmetric_and_separated(a: str, b: str, bucket: str) -> None:
    assume(a != b)
    ka, kb = MaskKeyPair.generate(), MaskKeyPair.generate()
    ab = pair_seed(ka.private, kb.public, bucket=bucket, member=a, peer=b)
    assert ab == pair_seed(kb.private, ka.public, bucket=bucket, member=b, peer=a)
    assert len(ab) == 32
    assert ab != pair_seed(ka.private, kb.public, bucket=bucket + "x", member=a, peer=b)
    assert ab != pair_seed(ka.private, kb.public, bucket=bucket, member=a + "x", peer=b)


def test_ids_and_bucket_fields_cannot_be_shifted() -> None:
    one = pair_seed(ALICE, BOB_PUB, bucket="ab", member="c", peer="d")
    assert one != pair_seed(ALICE, BOB_PUB, bucket="a", member="bc", peer="d")


def test_generated_pairs_match_and_hide_the_private_key() -> None:
    keys = MaskKeyPair.generate()
    assert public_key(keys.private) == keys.public
    assert keys.private.hex() not in repr(keys)


@pytest.mark.parametrize(("private", "peer_public", "member", "peer"), [
    (ALICE, bytes(32), "a", "b"),  # a low-order point: the shared secret would be zero
    (ALICE, BOB_PUB[:31], "a", "b"),
    (ALICE[:31], BOB_PUB, "a", "b"),
    (ALICE, BOB_PUB, "a", "a"),
])
def test_bad_inputs_are_refused(private: bytes, peer_public: bytes, member: str,
                                peer: str) -> None:
    with pytest.raises(SecAggError) as info:
        pair_seed(private, peer_public, bucket="b", member=member, peer=peer)
    assert info.value.problem is Problem.BAD_PARAMETER
