"""SecAgg+ masking: a member's masked input, and the exact sum from the survivors' inputs.

Member ``i`` with input ``x_i`` in Z_{2^b} sends

    y_i = x_i + PRG(s_i) + Σ_{j ∈ N(i)} σ_ij · PRG(m_ij)   (mod 2^b),

``s_i`` a fresh self-mask seed, ``m_ij = m_ji`` the pair seed of :func:`~.kdf.pair_seed`, and
``σ_ij = +1`` if ``i < j`` (by id) else ``−1``, so the pair masks of two survivors cancel in the
sum. For survivors S and dropped members D the server subtracts each survivor's self mask
(``s_i`` rebuilt from its shares) and, for each dropped neighbour ``j`` of a survivor, the
unmatched ``σ_ij·PRG(m_ij)``, derived from ``j``'s mask private key (rebuilt from its shares).
No member's self seed and mask key are ever both known: see :mod:`~.member`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import Problem, SecAggError
from .graph import Graph
from .kdf import pair_seed, public_key
from .keystream import MAX_BITS, expand_ring
from .quantize import RingArray

_SELF_DOMAIN = b"fedmq/secagg/self-mask"
_PAIR_DOMAIN = b"fedmq/secagg/pair-mask"


def self_mask(seed: bytes, n: int, bits: int, *, bucket: str) -> RingArray:
    """``PRG(s)``; the seed is fresh per bucket, and the bucket id in the domain keeps a
    reused seed from repeating a mask across buckets."""
    return expand_ring(seed, _SELF_DOMAIN + b"\x00" + bucket.encode(), n, bits)


def pair_mask(seed: bytes, n: int, bits: int, *, member: str, peer: str) -> RingArray:
    """``σ·PRG(seed)`` as ``member`` adds it: negated (mod 2^b) when ``member > peer``."""
    mask = expand_ring(seed, _PAIR_DOMAIN, n, bits)
    return _wrap(np.negative(mask), bits) if member > peer else mask


def _wrap(values: RingArray, bits: int) -> RingArray:
    return values & np.uint32((1 << bits) - 1) if bits < MAX_BITS else values


def _check_ring(values: RingArray, bits: int, what: str) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise SecAggError(Problem.BAD_PARAMETER, f"bit width {bits} not in 1..{MAX_BITS}")
    if values.dtype != np.uint32 or values.ndim != 1:
        raise SecAggError(Problem.BAD_PARAMETER, f"{what} is not a flat uint32 vector")
    if bits < MAX_BITS and values.size and int(values.max()) >> bits:
        raise SecAggError(Problem.BAD_PARAMETER, f"{what} is not reduced mod 2^{bits}")


def mask_input(values: RingArray, *, bits: int, bucket: str, member: str, self_seed: bytes,
               mask_private: bytes, neighbours: Mapping[str, bytes]) -> RingArray:
    """``member``'s masked input; ``neighbours`` maps each neighbour to its mask public key."""
    _check_ring(values, bits, "the input")
    out = values + self_mask(self_seed, values.size, bits, bucket=bucket)
    for peer, peer_public in neighbours.items():
        seed = pair_seed(mask_private, peer_public, bucket=bucket, member=member, peer=peer)
        out += pair_mask(seed, values.size, bits, member=member, peer=peer)
    return _wrap(out, bits)


def unmask(masked: Mapping[str, RingArray], *, bits: int, bucket: str, graph: Graph,
           public_keys: Mapping[str, bytes], self_seeds: Mapping[str, bytes],
           dropped_keys: Mapping[str, bytes], threshold: int) -> RingArray:
    """The sum mod 2^b of the survivors' (the keys of ``masked``) inputs, exactly, or a
    :class:`SecAggError`: fewer than ``threshold`` survivors, a secret missing, or a secret
    that must not exist (a survivor's mask key, a dropped member's self seed)."""
    survivors = sorted(masked)
    if threshold < 1:
        raise SecAggError(Problem.BAD_PARAMETER, f"threshold {threshold} < 1")
    if len(survivors) < threshold:
        raise SecAggError(Problem.BELOW_THRESHOLD,
                          f"{len(survivors)} survivors, threshold {threshold}")
    _check_secrets(survivors, graph, self_seeds, dropped_keys)
    lengths = {v.size for v in masked.values()}
    if len(lengths) != 1:
        raise SecAggError(Problem.BAD_PARAMETER, f"masked inputs of lengths {sorted(lengths)}")
    n = lengths.pop()
    total = np.zeros(n, dtype=np.uint32)
    for member in survivors:
        _check_ring(masked[member], bits, f"the masked input of {member}")
        total += masked[member]
        total -= self_mask(self_seeds[member], n, bits, bucket=bucket)
    for dropped, private in dropped_keys.items():
        _check_dropped_key(dropped, private, public_keys)
        for member in graph[dropped]:
            if member in masked:
                seed = pair_seed(private, public_keys[member], bucket=bucket, member=dropped,
                                 peer=member)
                total -= pair_mask(seed, n, bits, member=member, peer=dropped)
    return _wrap(total, bits)


def _check_secrets(survivors: Sequence[str], graph: Graph, self_seeds: Mapping[str, bytes],
                   dropped_keys: Mapping[str, bytes]) -> None:
    alive = set(survivors)
    unknown = (alive | set(self_seeds) | set(dropped_keys)) - set(graph)
    if unknown:
        raise SecAggError(Problem.BAD_PARAMETER, f"not in the bucket: {sorted(unknown)}")
    if alive & set(dropped_keys) or set(self_seeds) - alive:
        raise SecAggError(Problem.SHARE_CONFLICT,
                          "a survivor's mask key or a dropped member's self seed was supplied")
    if missing := alive - set(self_seeds):
        raise SecAggError(Problem.MISSING_SECRET, f"self seeds of {sorted(missing)}")
    needed = {j for i in alive for j in graph[i] if j not in alive}
    if missing := needed - set(dropped_keys):
        raise SecAggError(Problem.MISSING_SECRET, f"mask keys of {sorted(missing)}")


def _check_dropped_key(member: str, private: bytes, public_keys: Mapping[str, bytes]) -> None:
    if public_keys.get(member) != public_key(private):
        raise SecAggError(Problem.BAD_SHARE,
                          f"the rebuilt mask key of {member} is not its advertised key")
