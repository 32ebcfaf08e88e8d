"""Shamir t-of-n secret sharing of 32-byte secrets over GF(2^521 − 1).

A secret is one field element (2^256 < p), the polynomial's other t − 1 coefficients are
uniform field elements drawn from libsodium's CSPRNG (injectable for known-answer tests), and
share ``x`` is the polynomial at ``x``. Any t shares give the secret by Lagrange interpolation
at 0; t − 1 shares are jointly uniform whatever the secret. Shares carry no integrity of their
own: they travel in an authenticated box (:mod:`schemas.secagg.sealing`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from nacl.utils import random

from .errors import Problem, SecAggError

PRIME = (1 << 521) - 1
SECRET_BYTES = 32
ELEMENT_BYTES = 66
MAX_X = (1 << 32) - 1
SHARE_BYTES = 4 + ELEMENT_BYTES

RandomBytes = Callable[[int], bytes]


@dataclass(frozen=True, slots=True, repr=False)
class Share:
    """The polynomial at ``x`` (``0 < x < 2^32``)."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not 0 < self.x <= MAX_X:
            raise SecAggError(Problem.BAD_SHARE, f"share x={self.x} not in 1..{MAX_X}")
        if not 0 <= self.y < PRIME:
            raise SecAggError(Problem.BAD_SHARE, f"share x={self.x} is not a field element")

    def __repr__(self) -> str:
        return f"Share(x={self.x}, y=…)"  # a share is secret: never in a log line

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(4, "big") + self.y.to_bytes(ELEMENT_BYTES, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        if len(raw) != SHARE_BYTES:
            raise SecAggError(Problem.BAD_SHARE, f"a share is {SHARE_BYTES} bytes, not {len(raw)}")
        return cls(int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:], "big"))


def random_element(random_bytes: RandomBytes = random) -> int:
    """A uniform element of the field (rejection sampling, so without bias)."""
    while True:
        value = int.from_bytes(random_bytes(ELEMENT_BYTES), "big") & PRIME
        if value < PRIME:
            return value


def _check_xs(xs: Iterable[int]) -> list[int]:
    xs = list(xs)
    if len(set(xs)) != len(xs):
        raise SecAggError(Problem.BAD_SHARE, "duplicate share x")
    for x in xs:
        if not 0 < x <= MAX_X:
            raise SecAggError(Problem.BAD_SHARE, f"share x={x} not in 1..{MAX_X}")
    return xs


def share(secret: bytes, threshold: int, xs: Sequence[int], *,
          random_bytes: RandomBytes = random) -> list[Share]:
    """Shares of ``secret`` at ``xs``, any ``threshold`` of which reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise SecAggError(Problem.BAD_PARAMETER, f"a secret is 32 bytes, not {len(secret)}")
    points = _check_xs(xs)
    if not 1 <= threshold <= len(points):
        raise SecAggError(Problem.BAD_PARAMETER,
                          f"threshold {threshold} not in 1..{len(points)} shares")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [random_element(random_bytes) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x)) for x in points]


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coefficients):  # Horner
        acc = (acc * x + c) % PRIME
    return acc


def interpolate_at_zero(shares: Sequence[Share]) -> int:
    """The unique polynomial of degree < len(shares) through ``shares``, at 0."""
    xs = _check_xs(s.x for s in shares)
    total = 0
    for i, s in enumerate(shares):
        num, den = 1, 1
        for j, x in enumerate(xs):
            if j != i:
                num = num * x % PRIME
                den = den * (x - s.x) % PRIME
        total = (total + s.y * num * pow(den, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Sequence[Share], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (the first ``threshold`` are used)."""
    if threshold < 1:
        raise SecAggError(Problem.BAD_PARAMETER, f"threshold {threshold} < 1")
    _check_xs(s.x for s in shares)
    if len(shares) < threshold:
        raise SecAggError(Problem.BELOW_THRESHOLD,
                          f"{len(shares)} shares, {threshold} needed")
    value = interpolate_at_zero(shares[:threshold])
    if value >= 1 << (8 * SECRET_BYTES):
        raise SecAggError(Problem.BAD_SHARE, "the shares do not lie on one sharing")
    return value.to_bytes(SECRET_BYTES, "big")
