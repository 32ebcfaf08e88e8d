"""One member's part in one secure bucket, from the invitation to the answered unmask request.

Pure (no I/O): the agent keeps :meth:`MemberSession.to_state` durably, in the same transaction
as the stage message it produced, so a restart resumes where it stood and a share once
released stays released. Every refusal is a :class:`SecAggError` saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from nacl.public import PrivateKey, PublicKey

from .._convert import from_wire, to_wire
from ..limits import DEFAULT_LIMITS
from .errors import Problem, SecAggError
from .kdf import MaskKeyPair, public_key
from .masking import mask_input
from .member import MemberSecrets, ShareLedger
from .noise import skellam_noise
from .quantize import quantize, to_ring
from .sealing import open_pair, seal_pair
from .spec import BucketSpec
from .wire import (
    RevealedShare,
    SecAggInput,
    SecAggKeys,
    SecAggRelay,
    SecAggReveal,
    SecAggUnmask,
    pack_ring,
)

__all__ = ["MemberSession", "TrainedInput"]


@dataclass(frozen=True, slots=True)
class TrainedInput:
    """What training gave, before quantisation (the flat float delta and its provenance)."""

    task_id: str
    delta: npt.NDArray[np.float32]
    num_samples: int
    local_steps: int = 0
    train_loss: float = float("nan")
    train_ms: float = 0.0


@dataclass
class MemberSession:
    spec: BucketSpec
    me: str
    secrets: MemberSecrets
    ledger: ShareLedger
    neighbour_keys: dict[str, bytes] = field(default_factory=dict)
    """From the relay: the mask keys of the neighbours that advertised (and this member's)."""
    relayed: bool = False
    input_sent: bool = False
    answered: list[Any] | None = None
    """The unmask request answered: ``[request, survivors, dropped]``."""

    # -- stage 1: join -------------------------------------------------------------------------

    @classmethod
    def join(cls, spec: BucketSpec, me: str, seal: PrivateKey) -> tuple[MemberSession, SecAggKeys]:
        """Fresh secrets for this bucket, and their shares sealed to each holder."""
        if me not in spec.ids:
            raise SecAggError(Problem.BAD_PARAMETER, f"{me} is not a member of {spec.bucket_id}")
        if bytes(seal.public_key) != spec.seal_key(me):
            raise SecAggError(Problem.BAD_PARAMETER, "the bucket names another sealing key")
        secrets = MemberSecrets.generate()
        xs = spec.xs()
        holders = {h: xs[h] for h in spec.holders(me)}
        pairs = secrets.deal(bucket=spec.bucket_id, owner=me, holders=holders,
                             threshold=spec.threshold)
        sealed = {h: seal_pair(pair, seal, PublicKey(spec.seal_key(h)))
                  for h, pair in pairs.items()}
        session = cls(spec, me, secrets, ShareLedger(spec.bucket_id, me))
        return session, SecAggKeys(spec.bucket_id, secrets.mask_keys.public, sealed)

    # -- stage 2: the relayed keys and shares --------------------------------------------------

    def on_relay(self, relay: SecAggRelay, seal: PrivateKey) -> None:
        """Keep the neighbours' mask keys and open the share pairs sealed to us."""
        self._check_bucket(relay.bucket_id)
        if self.relayed:
            raise SecAggError(Problem.BAD_SHARE, "a second relay for this bucket")
        mine = set(self.spec.holders(self.me))
        if not set(relay.keys) <= mine or not set(relay.shares) <= mine:
            raise SecAggError(Problem.BAD_SHARE, "the relay names members that are not "
                              "this member's neighbours")
        if relay.keys.get(self.me) != self.secrets.mask_keys.public:
            raise SecAggError(Problem.BAD_SHARE, "the relay does not carry our own mask key")
        if set(relay.shares) != set(relay.keys):
            raise SecAggError(Problem.BAD_SHARE, "shares and keys name different members")
        if len(relay.keys) < self.spec.threshold:
            raise SecAggError(Problem.BELOW_THRESHOLD,
                              f"{len(relay.keys)} holders advertised, threshold "
                              f"{self.spec.threshold}")
        if any(len(key) != 32 for key in relay.keys.values()):
            raise SecAggError(Problem.BAD_PARAMETER, "a mask key is not 32 bytes")
        ledger = ShareLedger(self.spec.bucket_id, self.me)  # all pairs open, or none is kept
        for owner, sealed in sorted(relay.shares.items()):
            sender = PublicKey(self.spec.seal_key(owner))
            ledger.accept(open_pair(sealed, seal, sender, bucket=self.spec.bucket_id,
                                    owner=owner, holder=self.me))
        self.ledger = ledger
        self.neighbour_keys = dict(relay.keys)
        self.relayed = True

    # -- stage 3: the masked input -------------------------------------------------------------

    def masked_input(self, trained: TrainedInput) -> SecAggInput:
        """Clip, weight, quantise, noise and mask the delta (once per bucket)."""
        if not self.relayed:
            raise SecAggError(Problem.MISSING_SECRET, "the neighbours' keys have not arrived")
        if self.input_sent:
            raise SecAggError(Problem.BAD_SHARE, "the masked input was already made")
        spec = self.spec
        weight = spec.weight(trained.num_samples)
        q = quantize(trained.delta.astype(np.float64), clip_norm=spec.clip_norm,
                     scale=spec.scale, weight=weight, weight_cap=spec.weight_cap)
        if spec.noise_variance > 0:
            q = q + skellam_noise(q.size, central_variance=spec.noise_variance,
                                  min_members=spec.threshold)
        peers = {p: k for p, k in self.neighbour_keys.items() if p != self.me}
        masked = mask_input(to_ring(q, spec.bits), bits=spec.bits, bucket=spec.bucket_id,
                            member=self.me, self_seed=self.secrets.self_seed,
                            mask_private=self.secrets.mask_keys.private, neighbours=peers)
        self.input_sent = True
        return SecAggInput(spec.bucket_id, trained.task_id, trained.num_samples, weight,
                           int(q.size), pack_ring(masked, spec.bits), trained.local_steps,
                           trained.train_loss, trained.train_ms)

    # -- stage 4: unmasking --------------------------------------------------------------------

    def on_unmask(self, request: SecAggUnmask) -> SecAggReveal:
        """The shares the orchestrator asks for, if the request is consistent with what this
        member saw; asked again (a replay) or asked otherwise, it refuses. Named dropped after
        sending its input is consistent (the input came after the stage closed): its mask key
        may then be rebuilt, but its self mask never is, so the late input stays masked."""
        self._check_bucket(request.bucket_id)
        if self.answered is not None:
            raise SecAggError(Problem.SHARE_CONFLICT,
                              f"already answered request {self.answered[0]} of this bucket")
        if not self.relayed:
            raise SecAggError(Problem.MISSING_SECRET, "no relay came: nothing to reveal")
        alive, gone = set(request.survivors), set(request.dropped)
        members = set(self.spec.ids)
        if not (alive | gone) <= members:
            raise SecAggError(Problem.BAD_SHARE, "the request names non-members")
        if self.me in alive and not self.input_sent:
            raise SecAggError(Problem.SHARE_CONFLICT, "named a survivor but sent no input")
        advertised = set(self.neighbour_keys)
        neighbours = set(self.spec.holders(self.me))
        if not ((alive | gone) & neighbours) <= advertised:
            raise SecAggError(Problem.BAD_SHARE,
                              "the request names neighbours that never advertised keys")
        released = self.ledger.respond(survivors=alive, dropped=gone,
                                       threshold=self.spec.threshold)
        self.answered = [request.request, sorted(alive), sorted(gone)]
        return SecAggReveal(self.spec.bucket_id, request.request,
                            [RevealedShare(r.owner, r.kind.value, r.share.to_bytes())
                             for r in released])

    def _check_bucket(self, bucket: str) -> None:
        if bucket != self.spec.bucket_id:
            raise SecAggError(Problem.BAD_SHARE, f"a message for bucket {bucket}, not "
                              f"{self.spec.bucket_id}")

    # -- durable state -------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "spec": to_wire(self.spec), "me": self.me,
            "seed": self.secrets.self_seed, "mask": self.secrets.mask_keys.private,
            "ledger": self.ledger.export(), "keys": self.neighbour_keys,
            "relayed": self.relayed, "input_sent": self.input_sent, "answered": self.answered,
        }

    @classmethod
    def from_state(cls, saved: dict[str, Any]) -> MemberSession:
        try:
            spec = from_wire(BucketSpec, saved["spec"], DEFAULT_LIMITS)
            mask = bytes(saved["mask"])
            secrets = MemberSecrets(bytes(saved["seed"]), MaskKeyPair(mask, public_key(mask)))
            return cls(spec, str(saved["me"]), secrets, ShareLedger.restore(saved["ledger"]),
                       {str(k): bytes(v) for k, v in dict(saved["keys"]).items()},
                       bool(saved["relayed"]), bool(saved["input_sent"]), saved["answered"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SecAggError(Problem.BAD_PARAMETER, f"a saved bucket session is malformed "
                              f"({exc})") from None
