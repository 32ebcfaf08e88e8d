"""Sealed share pairs: only the recipient opens them, from the right sender, for this bucket."""

from __future__ import annotations

import msgpack
import pytest
from nacl.public import Box, PrivateKey

from schemas.secagg import MemberSecrets, Problem, SecAggError, SharePair, open_pair, seal_pair

OWNER, HOLDER, SERVER = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()


def _pair() -> SharePair:
    return MemberSecrets.generate().deal(bucket="b-1", owner="u", holders={"v": 3, "w": 4},
                                         threshold=2)["v"]


def _open(sealed: bytes, recipient: PrivateKey = HOLDER, sender: PrivateKey = OWNER, *,
          bucket: str = "b-1", owner: str = "u", holder: str = "v") -> SharePair:
    return open_pair(sealed, recipient, sender.public_key, bucket=bucket, owner=owner,
                     holder=holder)


def test_the_recipient_opens_what_the_owner_sealed() -> None:
    pair = _pair()
    sealed = seal_pair(pair, OWNER, HOLDER.public_key)
    assert _open(sealed) == pair
    assert pair.self_share.to_bytes() not in sealed and pair.key_share.to_bytes() not in sealed


def test_decrypting_a_share_needs_the_recipients_key() -> None:
    sealed = seal_pair(_pair(), OWNER, HOLDER.public_key)
    for recipient, sender in ((SERVER, OWNER), (SERVER, HOLDER), (HOLDER, SERVER)):
        with pytest.raises(SecAggError) as info:
            _open(sealed, recipient, sender)
        assert info.value.problem is Problem.NOT_SEALED_FOR_US


def test_a_box_turned_around_is_refused_by_its_context() -> None:
    """A Box opens for either end of the pair: the ids inside say which way it went."""
    sealed = seal_pair(_pair(), OWNER, HOLDER.public_key)
    with pytest.raises(SecAggError) as info:
        _open(sealed, OWNER, HOLDER, owner="v", holder="u")
    assert info.value.problem is Problem.BAD_SHARE


def test_tampering_is_detected() -> None:
    sealed = bytearray(seal_pair(_pair(), OWNER, HOLDER.public_key))
    sealed[40] ^= 1
    with pytest.raises(SecAggError) as info:
        _open(bytes(sealed))
    assert info.value.problem is Problem.NOT_SEALED_FOR_US


@pytest.mark.parametrize(("bucket", "owner", "holder"), [
    ("b-2", "u", "v"), ("b-1", "w", "v"), ("b-1", "u", "w")])
def test_a_pair_for_another_bucket_or_member_is_refused(bucket: str, owner: str,
                                                        holder: str) -> None:
    sealed = seal_pair(_pair(), OWNER, HOLDER.public_key)
    with pytest.raises(SecAggError) as info:
        _open(sealed, bucket=bucket, owner=owner, holder=holder)
    assert info.value.problem is Problem.BAD_SHARE


@pytest.mark.parametrize("body", [
    b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"v": 2}),
    msgpack.packb({"v": 1, "bucket": "b-1", "owner": "u", "holder": "v", "self": b"x",
                   "key": b"y"}),
    msgpack.packb({"v": 1, "bucket": 1, "owner": "u", "holder": "v", "self": b"", "key": b""}),
])
def test_malformed_bodies_are_refused(body: bytes) -> None:
    sealed = bytes(Box(OWNER, HOLDER.public_key).encrypt(body))
    with pytest.raises(SecAggError) as info:
        _open(sealed)
    assert info.value.problem is Problem.BAD_SHARE


def test_oversized_input_is_refused_before_decryption() -> None:
    with pytest.raises(SecAggError) as info:
        _open(bytes(4096))
    assert info.value.problem is Problem.BAD_SHARE
