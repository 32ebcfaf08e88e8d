"""The holder's ledger: one kind of share per owner and bucket, refused whole otherwise."""

from __future__ import annotations

import pytest

from schemas.secagg import (
    MemberSecrets,
    Problem,
    Released,
    SecAggError,
    ShareKind,
    ShareLedger,
    SharePair,
    rebuild,
    reconstruct,
)


def _ledger(bucket: str = "b-1", holder: str = "h", owners: tuple[str, ...] = ("a", "b", "c"),
            ) -> tuple[ShareLedger, dict[str, MemberSecrets], dict[str, dict[str, SharePair]]]:
    ledger = ShareLedger(bucket, holder)
    secrets = {o: MemberSecrets.generate() for o in owners}
    dealt = {o: s.deal(bucket=bucket, owner=o, holders={holder: 1, "x": 2, "y": 3}, threshold=2)
             for o, s in secrets.items()}
    for pairs in dealt.values():
        ledger.accept(pairs[holder])
    return ledger, secrets, dealt


def test_a_request_for_both_share_kinds_of_one_member_is_refused() -> None:
    ledger, _, _ = _ledger()
    with pytest.raises(SecAggError) as info:
        ledger.respond(survivors=["a", "b"], dropped=["a"])
    assert info.value.problem is Problem.SHARE_CONFLICT
    assert ledger.release("a", ShareKind.SELF_MASK).kind is ShareKind.SELF_MASK  # none released


@pytest.mark.parametrize(("first", "second"), [(ShareKind.SELF_MASK, ShareKind.MASK_KEY),
                                               (ShareKind.MASK_KEY, ShareKind.SELF_MASK)])
def test_after_one_kind_the_other_is_refused(first: ShareKind, second: ShareKind) -> None:
    ledger, _, _ = _ledger()
    ledger.release("a", first)
    assert ledger.release("a", first).kind is first  # the same kind again is harmless
    with pytest.raises(SecAggError) as info:
        ledger.release("a", second)
    assert info.value.problem is Problem.SHARE_CONFLICT
    assert ledger.release("b", second).kind is second  # other owners are unaffected


def test_a_conflicting_request_releases_nothing() -> None:
    ledger, _, _ = _ledger()
    ledger.release("c", ShareKind.MASK_KEY)
    with pytest.raises(SecAggError):
        ledger.respond(survivors=["a", "b", "c"])
    ledger.release("a", ShareKind.MASK_KEY)  # "a" was not released as a survivor


def test_buckets_are_separate() -> None:
    first, _, _ = _ledger("b-1")
    second, _, _ = _ledger("b-2")
    first.release("a", ShareKind.SELF_MASK)
    assert second.release("a", ShareKind.MASK_KEY).owner == "a"


def test_released_shares_rebuild_the_right_secrets() -> None:
    ledger, secrets, dealt = _ledger()
    other = ShareLedger("b-1", "x")
    for pairs in dealt.values():
        other.accept(pairs["x"])
    answers = [ledger.respond(survivors=["a", "b"], dropped=["c"], threshold=2),
               other.respond(survivors=["a", "b"], dropped=["c"], threshold=2)]
    rebuilt = rebuild(answers, threshold=2)
    assert rebuilt.self_seeds == {o: secrets[o].self_seed for o in ("a", "b")}
    assert rebuilt.dropped_keys == {"c": secrets["c"].mask_keys.private}


def test_the_server_cannot_rebuild_both_kinds() -> None:
    _, _, dealt = _ledger()
    pairs = dealt["a"]
    answers = [[Released("a", ShareKind.SELF_MASK, pairs["h"].self_share)],
               [Released("a", ShareKind.MASK_KEY, pairs["x"].key_share)]]
    with pytest.raises(SecAggError) as info:
        rebuild(answers, threshold=1)
    assert info.value.problem is Problem.SHARE_CONFLICT


def test_too_few_shares_or_survivors_are_refused() -> None:
    ledger, _, dealt = _ledger()
    with pytest.raises(SecAggError) as info:
        rebuild([ledger.respond(survivors=["a"])], threshold=2)
    assert info.value.problem is Problem.BELOW_THRESHOLD
    with pytest.raises(SecAggError) as info:
        ledger.respond(survivors=["b"], threshold=2)  # the holder's own check on the server
    assert info.value.problem is Problem.BELOW_THRESHOLD
    with pytest.raises(SecAggError):
        reconstruct([dealt["a"]["h"].self_share], 2)


def test_pairs_for_elsewhere_or_twice_are_refused() -> None:
    ledger, _, dealt = _ledger()
    for pair in (dealt["a"]["h"], dealt["a"]["x"],
                 MemberSecrets.generate().deal(bucket="b-9", owner="z", holders={"h": 1},
                                               threshold=1)["h"]):
        with pytest.raises(SecAggError) as info:
            ledger.accept(pair)
        assert info.value.problem is Problem.BAD_SHARE
    with pytest.raises(SecAggError):
        ledger.release("stranger", ShareKind.SELF_MASK)
    assert ledger.owners == {"a", "b", "c"}


def test_secrets_do_not_print() -> None:
    secrets = MemberSecrets.generate()
    assert secrets.self_seed.hex() not in repr(secrets)
    assert secrets.mask_keys.private.hex() not in repr(secrets)
