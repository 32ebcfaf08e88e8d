"""The SecAgg+ neighbour graph: a Harary graph on the members, placed by a bucket-keyed hash.

Every member masks with, and secret-shares to, only its neighbours, so a member's work grows
with the degree k, not with the bucket's size. ``H(k, n)`` joins each member to the k/2
nearest on either side of a ring; an odd k adds the opposite member (n even: k-regular; n odd:
one member gets k + 1). Positions on the ring are BLAKE2b(bucket, id) order, so all members
derive the same graph from the member list, and no id chooses its own neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from .errors import Problem, SecAggError

Graph = Mapping[str, tuple[str, ...]]
_PERSON = b"fedmq:secagg:gr"


def suggested_degree(n_members: int, factor: float = 3.0) -> int:
    """``min(n − 1, ceil(factor·log2 n))``: Bell et al.'s k = O(log n), with a constant the
    caller may raise for a larger tolerated fraction of corrupt or dropped members."""
    if n_members < 1 or factor <= 0:
        raise SecAggError(Problem.BAD_PARAMETER, f"{n_members} members, factor {factor}")
    return min(n_members - 1, math.ceil(factor * math.log2(max(n_members, 2))))


def ring_order(bucket: str, members: Iterable[str]) -> list[str]:
    """The members in ring order for ``bucket``."""
    ids = list(members)
    if len(set(ids)) != len(ids):
        raise SecAggError(Problem.BAD_PARAMETER, "duplicate member id")
    prefix = len(bucket.encode()).to_bytes(4, "big") + bucket.encode()

    def place(member: str) -> bytes:
        return blake2b(prefix + member.encode(), digest_size=16, person=_PERSON,
                       encoder=RawEncoder)

    return sorted(ids, key=lambda m: (place(m), m))


def _harary(n: int, k: int) -> set[tuple[int, int]]:
    edges: set[tuple[int, int]] = set()

    def join(a: int, b: int) -> None:
        a, b = a % n, b % n
        if a != b:
            edges.add((min(a, b), max(a, b)))

    for i in range(n):
        for d in range(1, k // 2 + 1):
            join(i, i + d)
    if k % 2 and n % 2 == 0:
        for i in range(n // 2):
            join(i, i + n // 2)
    elif k % 2:
        for i in range((n + 1) // 2):
            join(i, i + (n + 1) // 2)
    return edges


def neighbour_graph(bucket: str, members: Iterable[str], degree: int) -> dict[str, tuple[str, ...]]:
    """Each member's neighbours (sorted by id): complete when ``degree ≥ n − 1``."""
    ring = ring_order(bucket, members)
    n = len(ring)
    if n > 1 and degree < 1:
        raise SecAggError(Problem.BAD_PARAMETER, f"degree {degree} < 1")
    adjacent: dict[str, set[str]] = {m: set() for m in ring}
    if degree >= n - 1:
        for m in ring:
            adjacent[m] = set(ring) - {m}
    else:
        for a, b in _harary(n, degree):
            adjacent[ring[a]].add(ring[b])
            adjacent[ring[b]].add(ring[a])
    return {m: tuple(sorted(adjacent[m])) for m in sorted(ring)}


def share_xs(members: Iterable[str]) -> dict[str, int]:
    """Each member's Shamir evaluation point: its 1-based rank by id."""
    ordered = sorted(members)
    if len(set(ordered)) != len(ordered):
        raise SecAggError(Problem.BAD_PARAMETER, "duplicate member id")
    return {m: i + 1 for i, m in enumerate(ordered)}


def holders(graph: Graph, member: str) -> tuple[str, ...]:
    """Who holds shares of ``member``'s secrets: itself and its neighbours."""
    if member not in graph:
        raise SecAggError(Problem.BAD_PARAMETER, f"{member} is not in the bucket")
    return tuple(sorted((member, *graph[member])))


def safe_threshold(n_holders: int, corrupt: int = 0) -> int:
    """``⌊(h + c)/2⌋ + 1``, the least share threshold at which a server colluding with ``c`` of
    a member's ``h`` holders cannot collect both kinds of its shares: each honest holder
    releases one kind, so both need ``2(t − c) ≤ h − c`` holders."""
    if not 0 <= corrupt < n_holders:
        raise SecAggError(Problem.BAD_PARAMETER, f"{corrupt} corrupt of {n_holders} holders")
    return (n_holders + corrupt) // 2 + 1
