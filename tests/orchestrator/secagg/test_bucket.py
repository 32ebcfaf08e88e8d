"""A secure bucket's stages between real member sessions and the orchestrator's state
machine, every message through the signed envelope, with members dropping out."""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey, PublicKey
from nacl.signing import SigningKey

from orchestrator.secagg.bucket import BucketState, Phase
from schemas._convert import to_wire
from schemas.envelope import decode, pack
from schemas.messages import Message
from schemas.secagg import Problem, SecAggError, clip_l2, mask_input, open_pair
from schemas.secagg.session import MemberSession, TrainedInput
from schemas.secagg.spec import BucketMember, BucketSpec
from schemas.secagg.wire import (
    RevealedShare,
    SecAggInput,
    SecAggKeys,
    SecAggReveal,
    pack_ring,
    ring_bytes,
    unpack_ring,
)

D = 300  # coordinates
M = TypeVar("M", bound=Message)


def _wire(msg: M, key: SigningKey, sender: str) -> M:
    """Through the envelope and back, as the broker would carry it."""
    data = pack(msg, key=key, fed="f", sender=sender, seq=1, ts_ms=0)
    return decode(data, key.verify_key, type(msg))[1]


class Fleet:
    def __init__(self, n: int, *, threshold: int, degree: int, noise: float = 0.0) -> None:
        self.ids = [f"d{i:02d}" for i in range(n)]
        self.sign = {m: SigningKey.generate() for m in self.ids}
        self.seal = {m: self.sign[m].to_curve25519_private_key() for m in self.ids}
        members = [BucketMember(m, bytes(self.seal[m].public_key)) for m in self.ids]
        self.spec = BucketSpec("b-1", members, threshold=threshold, degree=degree, bits=20,
                               scale=1000.0, clip_norm=1.0, weight_cap=4.0, weight_unit=10.0,
                               noise_variance=noise)
        self.state = BucketState(self.spec, base_version=3, n_params=D, created_ms=0)
        self.sessions: dict[str, MemberSession] = {}
        self.masked: dict[str, np.ndarray] = {}
        rng = np.random.default_rng(7)
        self.deltas = {m: rng.normal(0, 0.1, D).astype(np.float32) for m in self.ids}
        self.samples = {m: int(rng.integers(5, 60)) for m in self.ids}

    def up(self, m: str, msg: M) -> M:
        return _wire(msg, self.sign[m], m)

    def keys(self, members: list[str]) -> None:
        for m in members:
            session, msg = MemberSession.join(self.spec, m, self.seal[m])
            self.sessions[m] = session
            assert self.state.on_keys(m, self.up(m, msg))

    def relay(self) -> None:
        for m, relay in self.state.close_keys().items():
            self.sessions[m].on_relay(relay, self.seal[m])

    def inputs(self, members: list[str]) -> None:
        for m in members:
            msg = self.sessions[m].masked_input(TrainedInput("t", self.deltas[m], self.samples[m]))
            kept, values = self.state.on_input(m, self.up(m, msg))
            assert kept
            self.masked[m] = values

    def reveal(self, members: list[str]) -> None:
        request = self.state.close_inputs()
        assert request is not None
        for m in members:
            answer = self.sessions[m].on_unmask(request)
            assert self.state.on_reveal(m, self.up(m, answer))

    def expected(self, survivors: list[str]) -> np.ndarray:
        total = np.zeros(D if not self.deltas else len(next(iter(self.deltas.values()))))
        for m in survivors:
            total += self.spec.weight(self.samples[m]) * clip_l2(self.deltas[m], 1.0)
        return total


def test_dropouts_before_and_after_input_leave_the_exact_sum() -> None:
    fleet = Fleet(10, threshold=5, degree=9)
    fleet.keys(fleet.ids)
    fleet.relay()
    submitted = fleet.ids[2:]  # 20 % offline before submitting
    fleet.inputs(submitted)
    fleet.reveal(fleet.ids[5:])  # 30 % more offline after submitting: 5 answer
    assert fleet.state.dropped == fleet.ids[:2]
    assert fleet.state.reveals_complete
    out = fleet.state.finish({m: fleet.masked[m] for m in submitted})
    assert out.survivors == submitted
    # stochastic rounding: within one quantum per member and coordinate
    err = np.abs(out.total - fleet.expected(submitted)).max()
    assert err <= len(submitted) / fleet.spec.scale
    assert out.weight == pytest.approx(sum(fleet.spec.weight(fleet.samples[m])
                                           for m in submitted))
    assert fleet.state.phase is Phase.DONE and fleet.state.reveals == {}


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_any_dropout_pattern_with_threshold_survivors_unmasks(data: st.DataObject) -> None:
    n = data.draw(st.integers(4, 9))
    degree = data.draw(st.integers(2, n - 1))
    threshold = data.draw(st.integers(2, min(degree + 1, n)))
    fleet = Fleet(n, threshold=threshold, degree=degree)
    fleet.keys(fleet.ids)
    fleet.relay()
    submitted = sorted(data.draw(st.sets(st.sampled_from(fleet.ids), min_size=threshold)))
    fleet.inputs(submitted)
    fleet.reveal(fleet.ids)  # everyone online answers
    out = fleet.state.finish({m: fleet.masked[m] for m in submitted})
    assert np.abs(out.total - fleet.expected(submitted)).max() <= n / fleet.spec.scale


def test_below_threshold_abandons_with_no_unmasking() -> None:
    fleet = Fleet(6, threshold=4, degree=5)
    fleet.keys(fleet.ids)
    fleet.relay()
    fleet.inputs(fleet.ids[:3])
    assert fleet.state.close_inputs() is None
    assert fleet.state.phase is Phase.ABANDONED
    assert "threshold 4" in fleet.state.reason


def test_a_member_without_enough_advertised_holders_is_left_out() -> None:
    fleet = Fleet(8, threshold=3, degree=2)  # a ring: each member has two neighbours
    ring_neighbours = fleet.spec.graph[fleet.ids[0]]
    fleet.keys([m for m in fleet.ids if m not in ring_neighbours])
    fleet.relay()
    assert fleet.ids[0] not in fleet.state.advertised


def _ready(n: int = 6, threshold: int = 3) -> Fleet:
    fleet = Fleet(n, threshold=threshold, degree=n - 1)
    fleet.keys(fleet.ids)
    fleet.relay()
    return fleet


def test_bad_input_is_refused_and_leaves_the_bucket_intact() -> None:
    fleet = _ready()
    m = fleet.ids[0]
    good = fleet.sessions[m].masked_input(TrainedInput("t", fleet.deltas[m], fleet.samples[m]))
    short = replace(good, n=D - 1, values=good.values[: ring_bytes(D - 1, 20)])
    with pytest.raises(SecAggError, match="coordinates"):
        fleet.state.on_input(m, short)
    with pytest.raises(SecAggError, match="bytes for"):
        fleet.state.on_input(m, replace(good, values=good.values[:-1]))
    with pytest.raises(SecAggError, match="weight"):
        fleet.state.on_input(m, replace(good, weight=good.weight * 2))
    with pytest.raises(SecAggError, match="not in"):
        fleet.state.on_input("intruder", good)
    assert fleet.state.inputs == {}
    assert fleet.state.on_input(m, good)[0]
    assert not fleet.state.on_input(m, good)[0]  # the same again: a duplicate
    with pytest.raises(SecAggError, match="second masked input"):
        fleet.state.on_input(m, replace(good, values=bytes(len(good.values))))
    with pytest.raises(SecAggError, match="inputs stage"):
        fleet.state.on_keys(m, SecAggKeys("b-1", bytes(32), {}))


def test_bad_shares_are_refused() -> None:
    fleet = _ready()
    fleet.inputs(fleet.ids)
    request = fleet.state.close_inputs()
    assert request is not None
    holder = fleet.ids[1]
    answer = fleet.sessions[holder].on_unmask(request)
    bad = replace(answer, shares=[replace(answer.shares[0], share=b"\x00" * 3)])
    with pytest.raises(SecAggError) as exc:
        fleet.state.on_reveal(holder, bad)
    assert exc.value.problem is Problem.BAD_SHARE
    wrong_kind = replace(answer, shares=[replace(answer.shares[0], kind="mask_key")])
    with pytest.raises(SecAggError, match="was not asked"):
        fleet.state.on_reveal(holder, wrong_kind)
    with pytest.raises(SecAggError, match="request 7"):
        fleet.state.on_reveal(holder, replace(answer, request=7))
    stolen = fleet.sessions[fleet.ids[2]].on_unmask(request)  # another point
    with pytest.raises(SecAggError, match="another point"):
        fleet.state.on_reveal(holder, stolen)
    assert fleet.state.reveals == {}
    assert fleet.state.on_reveal(holder, answer)
    assert not fleet.state.on_reveal(holder, answer)  # a duplicate
    with pytest.raises(SecAggError, match="answered twice"):
        fleet.state.on_reveal(holder, SecAggReveal("b-1", request.request, answer.shares[:-1]))


def test_members_refuse_inconsistent_or_replayed_unmask_requests() -> None:
    fleet = _ready()
    fleet.inputs(fleet.ids[:4])
    request = fleet.state.close_inputs()
    assert request is not None
    sender = fleet.ids[0]  # sent its input; named dropped, as if it had come late
    late_input = replace(request, survivors=request.survivors[1:],
                         dropped=[sender, *request.dropped])
    answer = fleet.sessions[sender].on_unmask(late_input)
    assert {(s.owner, s.kind) for s in answer.shares if s.owner == sender} == {
        (sender, "mask_key")}  # its own self-mask share is never released then
    late = fleet.ids[5]  # never sent
    with pytest.raises(SecAggError, match="sent no input"):
        fleet.sessions[late].on_unmask(replace(request, survivors=[*request.survivors, late],
                                               dropped=[]))
    with pytest.raises(SecAggError, match="already answered"):
        fleet.sessions[sender].on_unmask(request)  # the other story, to the same member
    holder = fleet.ids[1]
    fleet.sessions[holder].on_unmask(request)
    with pytest.raises(SecAggError, match="already answered") as exc:
        fleet.sessions[holder].on_unmask(request)  # replayed
    assert exc.value.problem is Problem.SHARE_CONFLICT
    with pytest.raises(SecAggError, match="bucket"):
        fleet.sessions[fleet.ids[2]].on_unmask(replace(request, bucket_id="b-2"))


def test_a_share_for_another_member_or_bucket_does_not_open() -> None:
    fleet = Fleet(4, threshold=2, degree=3)
    fleet.keys(fleet.ids)
    relays = fleet.state.close_keys()
    a, b = fleet.ids[0], fleet.ids[1]
    swapped = replace(relays[a], shares={**relays[a].shares, b: relays[fleet.ids[2]].shares[b]})
    with pytest.raises(SecAggError) as exc:
        fleet.sessions[a].on_relay(swapped, fleet.seal[a])
    assert exc.value.problem in (Problem.NOT_SEALED_FOR_US, Problem.BAD_SHARE)
    with pytest.raises(SecAggError, match="bucket"):
        fleet.sessions[a].on_relay(replace(relays[a], bucket_id="b-9"), fleet.seal[a])
    fleet.sessions[a].on_relay(relays[a], fleet.seal[a])  # the real one still opens


def test_the_states_survive_a_restart() -> None:
    fleet = _ready()
    fleet.inputs(fleet.ids)
    restored = BucketState.from_state(fleet.state.to_state())
    assert restored.to_state() == fleet.state.to_state()
    for m in fleet.ids:
        again = MemberSession.from_state(fleet.sessions[m].to_state())
        assert again.to_state() == fleet.sessions[m].to_state()
        fleet.sessions[m] = again
    fleet.state = restored
    fleet.reveal(fleet.ids)
    out = fleet.state.finish(fleet.masked)
    assert np.abs(out.total - fleet.expected(fleet.ids)).max() <= 6 / fleet.spec.scale


def test_noise_is_added_in_the_ring_and_survives_unmasking() -> None:
    fleet = Fleet(6, threshold=3, degree=5, noise=1e6)
    fleet.keys(fleet.ids)
    fleet.relay()
    fleet.inputs(fleet.ids)
    fleet.reveal(fleet.ids)
    out = fleet.state.finish(fleet.masked)
    residual = (out.total - fleet.expected(fleet.ids)) * fleet.spec.scale
    # six members of variance 1e6 / 3 each: about sqrt(2e6) per coordinate
    assert 1000 < float(np.std(residual)) < 1900


def test_an_unmasked_input_is_uncorrelated_with_the_update() -> None:
    fleet = Fleet(3, threshold=2, degree=2)
    big = 100_000
    fleet.state = BucketState(fleet.spec, base_version=0, n_params=big, created_ms=0)
    fleet.deltas = {m: np.random.default_rng(1).normal(0, 0.003, big).astype(np.float32)
                    for m in fleet.ids}
    fleet.keys(fleet.ids)
    fleet.relay()
    fleet.inputs(fleet.ids)
    for m in fleet.ids:
        r = np.corrcoef(fleet.masked[m].astype(np.float64), fleet.deltas[m])[0, 1]
        assert abs(r) < 0.05


def test_messages_carry_no_secret_in_clear() -> None:
    fleet = Fleet(4, threshold=2, degree=3)
    session, msg = MemberSession.join(fleet.spec, fleet.ids[0], fleet.seal[fleet.ids[0]])
    wire = pack(msg, key=fleet.sign[fleet.ids[0]], fed="f", sender=fleet.ids[0], seq=1, ts_ms=0)
    assert session.secrets.self_seed not in wire
    assert session.secrets.mask_keys.private not in wire
    assert RevealedShare("x", "self_mask", b"") is not None
    assert isinstance(fleet.seal[fleet.ids[0]], PrivateKey)
    _ = SecAggInput


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 32), data=st.data())
def test_ring_packing_round_trips_with_every_bit_paid(bits: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 40))
    values = np.array(data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n)),
                      dtype=np.uint32)
    packed = pack_ring(values, bits)
    assert len(packed) == ring_bytes(n, bits) == (n * bits + 7) // 8
    assert np.array_equal(unpack_ring(packed, n, bits), values)
    if n * bits % 8:
        spoiled = packed[:-1] + bytes([packed[-1] | 0x80])
        with pytest.raises(SecAggError, match="padding"):
            unpack_ring(spoiled, n, bits)


def test_nothing_stored_or_relayed_holds_a_members_secret() -> None:
    """Everything the orchestrator keeps for a bucket in its unmask stage (its state, the
    masked inputs) and every message it relayed: no member's self seed or mask key is in
    them, and a relayed pair opens only with its holder's key."""
    fleet = _ready()
    fleet.inputs(fleet.ids[:5])
    request = fleet.state.close_inputs()
    assert request is not None
    for m in fleet.ids[1:]:
        fleet.state.on_reveal(m, fleet.sessions[m].on_unmask(request))
    stored = msgpack.packb(fleet.state.to_state()) + b"".join(
        pack_ring(v, 20) for v in fleet.masked.values())
    relayed = b"".join(msgpack.packb(to_wire(fleet.state.relay_for(m))) for m in fleet.ids)
    for m in fleet.ids:
        secrets = fleet.sessions[m].secrets
        for secret in (secrets.self_seed, secrets.mask_keys.private):
            assert secret not in stored and secret not in relayed
    a, b = fleet.ids[0], fleet.ids[1]
    sealed = fleet.state.relay_for(a).shares[b]
    with pytest.raises(SecAggError) as exc:
        open_pair(sealed, fleet.seal[b], PublicKey(fleet.spec.seal_key(b)), bucket="b-1",
                  owner=b, holder=a)
    assert exc.value.problem is Problem.NOT_SEALED_FOR_US


def test_a_sum_larger_than_clipped_inputs_allow_is_refused() -> None:
    """A member that masks anything but its clipped delta (here: every coordinate at a tenth
    of the ring) cannot slip it into a sum."""
    fleet = _ready(n=4, threshold=2)
    cheat = fleet.ids[0]
    honest = fleet.sessions[cheat]
    good = honest.masked_input(TrainedInput("t", fleet.deltas[cheat], fleet.samples[cheat]))
    # re-mask a huge input with the same secrets: what a member bypassing the clip would send
    big = np.full(D, 2 ** 20 // 10, dtype=np.uint32)
    peers = {p: k for p, k in honest.neighbour_keys.items() if p != cheat}
    values = mask_input(big, bits=20, bucket="b-1", member=cheat,
                        self_seed=honest.secrets.self_seed,
                        mask_private=honest.secrets.mask_keys.private, neighbours=peers)
    forged = replace(good, values=pack_ring(values, 20))
    kept, ring = fleet.state.on_input(cheat, forged)
    assert kept
    fleet.masked[cheat] = ring
    fleet.inputs(fleet.ids[1:])
    fleet.reveal(fleet.ids)
    with pytest.raises(SecAggError) as exc:
        fleet.state.finish(fleet.masked)
    assert exc.value.problem is Problem.NORM_BOUND
    assert fleet.state.phase is Phase.UNMASK  # nothing was made of it
