"""Shamir sharing: a fixed polynomial's shares, any t reconstruct, t − 1 say nothing, bad x."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.secagg import Problem, SecAggError, Share, interpolate_at_zero, reconstruct, share
from schemas.secagg.shamir import ELEMENT_BYTES, MAX_X, PRIME, random_element

SECRET = bytes(range(1, 33))
S = int.from_bytes(SECRET, "big")


def coefficients(*values: int):  # type: ignore[no-untyped-def]
    """A random_bytes that yields the given field elements, in order."""
    stream = iter(values)
    return lambda n: next(stream).to_bytes(n, "big")


def test_known_answer_fixed_polynomial() -> None:
    # f(x) = S + 7x + 5x²
    shares = share(SECRET, 3, [1, 2, 3, 10], random_bytes=coefficients(7, 5))
    assert [(s.x, s.y) for s in shares] == [
        (1, S + 12), (2, S + 34), (3, S + 66), (10, S + 570)]
    assert shares[0].to_bytes().hex() == "00000001" + (S + 12).to_bytes(ELEMENT_BYTES, "big").hex()
    assert reconstruct(shares[1:], 3) == SECRET


def test_known_answer_wraps_the_field() -> None:
    shares = share(SECRET, 2, [2, 3], random_bytes=coefficients(PRIME - 1))  # f(x) = S − x
    assert [s.y for s in shares] == [S - 2, S - 3]


def test_rejection_sampling_skips_values_outside_the_field() -> None:
    assert random_element(coefficients(PRIME, (1 << 528) - 1, 3)) == 3


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(1, 12), data=st.data())
def test_any_t_shares_reconstruct(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, MAX_X), min_size=n, max_size=n, unique=True))
    shares = share(secret, t, xs)
    chosen = data.draw(st.permutations(shares))[: data.draw(st.integers(t, n))]
    assert reconstruct(chosen, t) == secret


def test_every_t_subset_reconstructs() -> None:
    shares = share(SECRET, 3, range(1, 7))
    for subset in itertools.combinations(shares, 3):
        assert reconstruct(list(subset), 3) == SECRET


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), t=st.integers(2, 8))
def test_fewer_than_t_shares_do_not_give_the_secret(secret: bytes, t: int) -> None:
    shares = share(secret, t, range(1, t + 3))
    value = interpolate_at_zero(shares[: t - 1])
    assert value != int.from_bytes(secret, "big")
    with pytest.raises(SecAggError) as info:
        reconstruct(shares[: t - 1], t)
    assert info.value.problem is Problem.BELOW_THRESHOLD


@settings(max_examples=20, deadline=None)
@given(other=st.binary(min_size=32, max_size=32), x=st.integers(1, MAX_X))
def test_one_share_of_a_2_of_n_sharing_fits_every_secret(other: bytes, x: int) -> None:
    """Perfect secrecy, concretely: the coefficient that gives ``SECRET`` share ``y`` at ``x``
    has a twin that gives ``other`` the same share, so a share alone says nothing."""
    a = random_element()
    mine = share(SECRET, 2, [x, x % MAX_X + 1], random_bytes=coefficients(a))[0]
    twin = (mine.y - int.from_bytes(other, "big")) * pow(x, -1, PRIME) % PRIME
    assert share(other, 2, [x, x % MAX_X + 1], random_bytes=coefficients(twin))[0] == mine


@pytest.mark.parametrize("xs", [[1, 1, 2], [0, 1, 2], [1, 2, MAX_X + 1], [-1, 1, 2]])
def test_duplicate_or_invalid_x_is_refused(xs: list[int]) -> None:
    with pytest.raises(SecAggError) as info:
        share(SECRET, 2, xs)
    assert info.value.problem is Problem.BAD_SHARE


def test_duplicate_x_in_reconstruction_is_refused() -> None:
    shares = share(SECRET, 2, [1, 2])
    with pytest.raises(SecAggError) as info:
        reconstruct([shares[0], shares[0]], 2)
    assert info.value.problem is Problem.BAD_SHARE


@pytest.mark.parametrize(("secret", "t", "n"), [(SECRET, 0, 3), (SECRET, 4, 3), (b"x", 2, 3)])
def test_bad_parameters_are_refused(secret: bytes, t: int, n: int) -> None:
    with pytest.raises(SecAggError) as info:
        share(secret, t, range(1, n + 1))
    assert info.value.problem is Problem.BAD_PARAMETER


def test_a_random_forged_share_is_detected() -> None:
    """A forged share moves f(0) to a random field element, which is a 32-byte value with
    probability 2^256/p ≈ 2^-265."""
    shares = share(SECRET, 2, [1, 2])
    forged = [shares[0], Share(2, random_element())]
    with pytest.raises(SecAggError) as info:
        reconstruct(forged, 2)
    assert info.value.problem is Problem.BAD_SHARE


def test_share_encoding_round_trips_and_checks() -> None:
    one = share(SECRET, 2, [5, 6])[0]
    assert Share.from_bytes(one.to_bytes()) == one
    assert "y=…" in repr(one) and str(one.y) not in repr(one)
    for raw in (b"", one.to_bytes()[:-1], bytes(4) + bytes(ELEMENT_BYTES),
                (1).to_bytes(4, "big") + PRIME.to_bytes(ELEMENT_BYTES, "big")):
        with pytest.raises(SecAggError):
            Share.from_bytes(raw)
