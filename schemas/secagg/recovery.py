"""The server's side of unmasking: rebuild the self seeds and dropped mask keys from shares."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import Problem, SecAggError
from .member import Released, ShareKind
from .shamir import Share, reconstruct


@dataclass(frozen=True, slots=True)
class Secrets:
    """What :func:`~.masking.unmask` needs: survivors' self seeds, dropped members' mask keys."""

    self_seeds: dict[str, bytes]
    dropped_keys: dict[str, bytes]


def rebuild(responses: Iterable[Iterable[Released]], *, threshold: int) -> Secrets:
    """Each owner's secret from ``threshold`` of its released shares; an owner with shares of
    both kinds, or with fewer than ``threshold``, is refused (no partial result)."""
    shares: dict[tuple[str, ShareKind], list[Share]] = {}
    for response in responses:
        for released in response:
            shares.setdefault((released.owner, released.kind), []).append(released.share)
    owners = [owner for owner, _ in shares]
    if len(set(owners)) != len(owners):
        both = sorted({o for o in owners if owners.count(o) > 1})
        raise SecAggError(Problem.SHARE_CONFLICT, f"shares of both kinds of {both}")
    secrets = Secrets({}, {})
    for (owner, kind), got in sorted(shares.items()):
        if len(got) < threshold:
            raise SecAggError(Problem.BELOW_THRESHOLD,
                              f"{len(got)} {kind.value} shares of {owner}, {threshold} needed")
        target = secrets.self_seeds if kind is ShareKind.SELF_MASK else secrets.dropped_keys
        target[owner] = reconstruct(got, threshold)
    return secrets
