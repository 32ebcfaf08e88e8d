"""The honest member's side of unmasking: hold the shares, release one kind per owner.

For each owner a holder releases either its share of the owner's self-mask seed (the owner
survived) or its share of the owner's mask key (the owner dropped), never both, within one
bucket: with both kinds from t holders the server could strip every mask from that owner's
input. Each request is checked whole before anything is released.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from nacl.utils import random

from .errors import Problem, SecAggError
from .kdf import MaskKeyPair
from .keystream import SEED_BYTES
from .sealing import SharePair
from .shamir import RandomBytes, Share, share


@dataclass(frozen=True, slots=True, repr=False)
class MemberSecrets:
    """One member's secrets for one bucket: its self-mask seed and its mask key pair."""

    self_seed: bytes
    mask_keys: MaskKeyPair

    @classmethod
    def generate(cls) -> MemberSecrets:
        return cls(random(SEED_BYTES), MaskKeyPair.generate())

    def __repr__(self) -> str:
        return f"MemberSecrets({self.mask_keys!r})"

    def deal(self, *, bucket: str, owner: str, holders: Mapping[str, int], threshold: int,
             random_bytes: RandomBytes = random) -> dict[str, SharePair]:
        """A share pair for each holder (holder id → its Shamir x), ``threshold``-of-all."""
        xs = [holders[h] for h in sorted(holders)]
        selfs = share(self.self_seed, threshold, xs, random_bytes=random_bytes)
        keys = share(self.mask_keys.private, threshold, xs, random_bytes=random_bytes)
        return {h: SharePair(bucket, owner, h, s, k)
                for h, s, k in zip(sorted(holders), selfs, keys, strict=True)}


class ShareKind(StrEnum):
    SELF_MASK = "self_mask"  # the owner survived: its self mask is removed
    MASK_KEY = "mask_key"  # the owner dropped: its neighbours' pair masks are removed


@dataclass(frozen=True, slots=True)
class Released:
    owner: str
    kind: ShareKind
    share: Share


class ShareLedger:
    """The share pairs one holder keeps for one bucket, and what it has released of each."""

    def __init__(self, bucket: str, holder: str) -> None:
        self._bucket = bucket
        self._holder = holder
        self._pairs: dict[str, SharePair] = {}
        self._released: dict[str, ShareKind] = {}

    @property
    def owners(self) -> frozenset[str]:
        return frozenset(self._pairs)

    def export(self) -> dict[str, Any]:
        """Everything the ledger holds and has released, as msgpack-able values (a member
        keeps it durably: a restart must not forget what was released)."""
        return {
            "bucket": self._bucket, "holder": self._holder,
            "pairs": {o: [p.self_share.to_bytes(), p.key_share.to_bytes()]
                      for o, p in self._pairs.items()},
            "released": {o: k.value for o, k in self._released.items()},
        }

    @classmethod
    def restore(cls, saved: Mapping[str, Any]) -> ShareLedger:
        try:
            ledger = cls(str(saved["bucket"]), str(saved["holder"]))
            for owner, (self_share, key_share) in dict(saved["pairs"]).items():
                ledger._pairs[str(owner)] = SharePair(
                    ledger._bucket, str(owner), ledger._holder, Share.from_bytes(self_share),
                    Share.from_bytes(key_share))
            ledger._released = {str(o): ShareKind(k) for o, k in dict(saved["released"]).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise SecAggError(Problem.BAD_SHARE, f"a saved share ledger is malformed ({exc})"
                              ) from None
        return ledger

    def accept(self, pair: SharePair) -> None:
        """Keep ``pair`` (once per owner: a second pair from one owner is refused)."""
        if (pair.bucket, pair.holder) != (self._bucket, self._holder):
            raise SecAggError(Problem.BAD_SHARE,
                              f"a pair for {pair.bucket}→{pair.holder}, not this ledger")
        if pair.owner in self._pairs:
            raise SecAggError(Problem.BAD_SHARE, f"a second pair from {pair.owner}")
        self._pairs[pair.owner] = pair

    def release(self, owner: str, kind: ShareKind) -> Released:
        """The share of ``kind`` of ``owner``'s secret; the other kind is refused ever after."""
        if kind is ShareKind.SELF_MASK:
            got = self.respond(survivors=[owner])
        else:
            got = self.respond(dropped=[owner])
        if not got:
            raise SecAggError(Problem.BAD_SHARE, f"no share of {owner} is held here")
        return got[0]

    def respond(self, *, survivors: Iterable[str] = (), dropped: Iterable[str] = (),
                threshold: int = 1) -> list[Released]:
        """Self-mask shares of held ``survivors`` and mask-key shares of held ``dropped``.

        Refused whole if the lists overlap, if fewer than ``threshold`` survivors are named
        (when any are), or if any owner's other kind was released before."""
        alive, gone = set(survivors), set(dropped)
        if alive & gone:
            raise SecAggError(Problem.SHARE_CONFLICT,
                              f"both survived and dropped: {sorted(alive & gone)}")
        if alive and len(alive) < threshold:
            raise SecAggError(Problem.BELOW_THRESHOLD,
                              f"{len(alive)} survivors, threshold {threshold}")
        wanted = [(o, ShareKind.SELF_MASK) for o in sorted(alive) if o in self._pairs]
        wanted += [(o, ShareKind.MASK_KEY) for o in sorted(gone) if o in self._pairs]
        for owner, kind in wanted:
            if self._released.get(owner, kind) is not kind:
                raise SecAggError(Problem.SHARE_CONFLICT,
                                  f"the {self._released[owner].value} share of {owner} was "
                                  f"released in {self._bucket}: no {kind.value} share")
        out = []
        for owner, kind in wanted:
            self._released[owner] = kind
            pair = self._pairs[owner]
            share = pair.self_share if kind is ShareKind.SELF_MASK else pair.key_share
            out.append(Released(owner, kind, share))
        return out
