"""One secure bucket run end to end by honest members, from the secagg primitives.

    bucket = SecureBucket.set_up("b-1", ["d0", "d1", "d2"], degree=2, share_threshold=2)
    total = bucket.aggregate(inputs, survivors={"d0", "d1"}, threshold=2)

Members deal sealed share pairs to their holders (themselves and their neighbours), the
survivors mask, every surviving holder answers the server's one unmask request, and the
server rebuilds the secrets and unmasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from nacl.public import PrivateKey

from schemas.secagg import (
    MemberSecrets,
    ShareLedger,
    holders,
    mask_input,
    neighbour_graph,
    open_pair,
    rebuild,
    seal_pair,
    share_xs,
    unmask,
)
from schemas.secagg.graph import Graph
from schemas.secagg.quantize import RingArray


@dataclass
class SecureBucket:
    bucket: str
    graph: Graph
    bits: int
    share_threshold: int
    secrets: dict[str, MemberSecrets]
    ledgers: dict[str, ShareLedger]

    @classmethod
    def set_up(cls, bucket: str, members: list[str], *, degree: int, share_threshold: int,
               bits: int = 16) -> SecureBucket:
        graph = neighbour_graph(bucket, members, degree)
        xs = share_xs(members)
        sealing = {m: PrivateKey.generate() for m in members}
        secrets = {m: MemberSecrets.generate() for m in members}
        ledgers = {m: ShareLedger(bucket, m) for m in members}
        for owner in members:
            mine = {h: xs[h] for h in holders(graph, owner)}
            pairs = secrets[owner].deal(bucket=bucket, owner=owner, holders=mine,
                                        threshold=share_threshold)
            for holder, pair in pairs.items():
                sealed = seal_pair(pair, sealing[owner], sealing[holder].public_key)
                ledgers[holder].accept(open_pair(sealed, sealing[holder],
                                                 sealing[owner].public_key, bucket=bucket,
                                                 owner=owner, holder=holder))
        return cls(bucket, graph, bits, share_threshold, secrets, ledgers)

    @property
    def public_keys(self) -> dict[str, bytes]:
        return {m: s.mask_keys.public for m, s in self.secrets.items()}

    def masked(self, member: str, values: RingArray) -> RingArray:
        keys = self.public_keys
        return mask_input(values, bits=self.bits, bucket=self.bucket, member=member,
                          self_seed=self.secrets[member].self_seed,
                          mask_private=self.secrets[member].mask_keys.private,
                          neighbours={p: keys[p] for p in self.graph[member]})

    def aggregate(self, inputs: Mapping[str, RingArray], *, survivors: Set[str],
                  threshold: int) -> RingArray:
        masked = {m: self.masked(m, inputs[m]) for m in sorted(survivors)}
        needed = {j for i in survivors for j in self.graph[i] if j not in survivors}
        responses = [self.ledgers[h].respond(survivors=survivors, dropped=needed,
                                             threshold=threshold) for h in sorted(survivors)]
        secrets = rebuild(responses, threshold=self.share_threshold)
        return unmask(masked, bits=self.bits, bucket=self.bucket, graph=self.graph,
                      public_keys=self.public_keys, self_seeds=secrets.self_seeds,
                      dropped_keys=secrets.dropped_keys, threshold=threshold)

    def recoverable(self, survivors: Set[str], threshold: int) -> bool:
        """Whether :meth:`aggregate` can succeed: enough survivors, and every secret it needs
        has ``share_threshold`` surviving holders."""
        needed = set(survivors) | {j for i in survivors for j in self.graph[i]}
        return len(survivors) >= threshold and all(
            len(set(holders(self.graph, m)) & set(survivors)) >= self.share_threshold
            for m in needed)
