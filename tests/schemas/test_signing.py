"""Signatures cover exactly the signed bytes; sealed bodies need the receiver's key; enrollment,
header binding, enrollment MACs and key-rotation proofs."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from schemas import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    DecodeError,
    Enroll,
    FedmqError,
    Header,
    Reason,
    SignatureError,
    Status,
    Update,
    check_enroll_mac,
    check_header,
    check_rotation_proof,
    decode,
    decode_body,
    enroll_mac,
    key_id,
    new_signing_key,
    open_enroll,
    pack,
    rotation_proof,
    seal_key,
    split,
    unseal_key,
    verify,
)
from schemas.signing import (
    ENROLL_SECRET_BYTES,
    MAX_PASSWORD_BYTES,
    open_password,
    password_digest,
    seal_password,
)

DEVICE = SigningKey(b"\x07" * 32)
ORCH = SigningKey(b"\x09" * 32)
OTHER = SigningKey(b"\x0b" * 32)
SECRET = b"\x42" * ENROLL_SECRET_BYTES


def _status(seq: int = 5) -> bytes:
    return pack(Status(battery_pct=81.5, outbox_len=2), key=DEVICE, fed="f", sender="dev-a",
                seq=seq, ts_ms=1_000)


def _repack(signed: bytes, signature: bytes) -> bytes:
    out: bytes = msgpack.packb([signed, signature], use_bin_type=True)
    return out


def test_every_changed_byte_of_signed_bytes_or_signature_fails() -> None:
    signed, signature = split(_status())
    verify(_repack(signed, signature), DEVICE.verify_key)  # the unmodified one verifies
    for i in range(len(signed)):
        for mask in (0x01, 0x80):
            tampered = bytearray(signed)
            tampered[i] ^= mask
            with pytest.raises(SignatureError) as info:
                verify(_repack(bytes(tampered), signature), DEVICE.verify_key)
            assert info.value.reason is Reason.BAD_SIGNATURE
    for i in range(len(signature)):
        tampered = bytearray(signature)
        tampered[i] ^= 0x01
        with pytest.raises(SignatureError):
            verify(_repack(signed, bytes(tampered)), DEVICE.verify_key)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_byte_change_fails_with_a_typed_error(data: st.DataObject) -> None:
    """Flipping any bits anywhere in the whole envelope (framing included) never verifies."""
    envelope = bytearray(_status())
    i = data.draw(st.integers(0, len(envelope) - 1))
    envelope[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FedmqError) as info:
        decode(bytes(envelope), DEVICE.verify_key, Status)
    assert info.value.reason in (Reason.BAD_SIGNATURE, Reason.MALFORMED)


def test_another_key_does_not_verify() -> None:
    with pytest.raises(SignatureError):
        verify(_status(), OTHER.verify_key)
    with pytest.raises(SignatureError):
        decode(_status(), ORCH.verify_key, Status)


def test_a_re_signed_message_needs_the_senders_key() -> None:
    """An attacker who rewrites the header and signs with their own key gets nowhere."""
    signed, _ = split(_status(seq=5))
    fields = msgpack.unpackb(signed)
    fields["seq"] = 6
    forged = msgpack.packb(fields, use_bin_type=True)
    with pytest.raises(SignatureError):
        verify(_repack(forged, OTHER.sign(forged).signature), DEVICE.verify_key)


def test_signed_bytes_have_the_documented_layout() -> None:
    signed, signature = split(_status(seq=5))
    fields = msgpack.unpackb(signed)
    assert list(fields) == ["v", "type", "fed", "sender", "seq", "ts_ms", "enc", "to", "body"]
    assert (fields["v"], fields["type"], fields["enc"]) == (PROTOCOL_VERSION, "status", "zstd")
    assert fields["body"][:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert len(signature) == 64
    DEVICE.verify_key.verify(signed, signature)  # plain Ed25519 over exactly signed_bytes


def test_sealed_body_needs_the_receivers_key_and_stays_signed() -> None:
    update = Update("task-1", 4, 32, [], train_loss=0.25)
    data = pack(update, key=DEVICE, fed="f", sender="dev-a", seq=1, ts_ms=1,
                seal_to=seal_key(ORCH.verify_key))
    opened = verify(data, DEVICE.verify_key)  # anyone holding the device key can verify
    assert opened.header.enc == "sealed"
    assert b"task-1" not in opened.body
    with pytest.raises(DecodeError) as info:
        decode_body(opened, Update)
    assert info.value.reason is Reason.MALFORMED
    with pytest.raises(DecodeError, match="does not open"):
        decode_body(opened, Update, unseal=unseal_key(OTHER))
    assert decode_body(opened, Update, unseal=unseal_key(ORCH)) == update
    # the signature covers the sealed bytes: a changed ciphertext byte fails verification
    signed, signature = split(data)
    fields = msgpack.unpackb(signed)
    body = bytearray(fields["body"])
    body[-1] ^= 1
    fields["body"] = bytes(body)
    with pytest.raises(SignatureError):
        verify(_repack(msgpack.packb(fields, use_bin_type=True), signature), DEVICE.verify_key)


def test_unseal_key_unused_for_plain_bodies() -> None:
    opened = verify(_status(), DEVICE.verify_key)
    assert decode_body(opened, Status, unseal=unseal_key(ORCH)).battery_pct == 81.5


# -- enrollment -------------------------------------------------------------------------------


def _enroll(key: SigningKey, *, device_id: str = "dev-a", sender: str = "dev-a",
            carried: bytes | None = None) -> bytes:
    public = carried if carried is not None else bytes(key.verify_key)
    mac = enroll_mac(SECRET, fed="f", device_id=device_id, public_key=public)
    return pack(Enroll(device_id, public, mac, agent_version="0.1"), key=key, fed="f",
                sender=sender, seq=0, ts_ms=1)


def test_open_enroll_proves_possession_of_the_carried_key() -> None:
    header, message = open_enroll(_enroll(DEVICE))
    assert (header.sender, header.type, message.public_key) == (
        "dev-a", "enroll", bytes(DEVICE.verify_key))
    assert check_enroll_mac(SECRET, message.mac, fed="f", device_id="dev-a",
                            public_key=message.public_key)


def test_open_enroll_refuses_a_key_the_signer_does_not_hold() -> None:
    with pytest.raises(SignatureError) as info:
        open_enroll(_enroll(OTHER, carried=bytes(DEVICE.verify_key)))
    assert (info.value.sender, info.value.seq) == ("dev-a", 0)


def test_open_enroll_refuses_a_device_id_other_than_the_sender() -> None:
    with pytest.raises(FedmqError) as info:
        open_enroll(_enroll(DEVICE, device_id="dev-b", sender="dev-a"))
    assert info.value.reason is Reason.SENDER_MISMATCH


def test_open_enroll_refuses_other_types() -> None:
    with pytest.raises(DecodeError) as info:
        open_enroll(_status())
    assert info.value.reason is Reason.WRONG_TYPE


def test_enroll_mac_binds_secret_federation_device_and_key() -> None:
    public = bytes(DEVICE.verify_key)
    mac = enroll_mac(SECRET, fed="f", device_id="dev-a", public_key=public)
    assert len(mac) == 32
    assert check_enroll_mac(SECRET, mac, fed="f", device_id="dev-a", public_key=public)
    assert not check_enroll_mac(b"\x43" * 32, mac, fed="f", device_id="dev-a", public_key=public)
    assert not check_enroll_mac(SECRET, mac, fed="g", device_id="dev-a", public_key=public)
    assert not check_enroll_mac(SECRET, mac, fed="f", device_id="dev-b", public_key=public)
    assert not check_enroll_mac(SECRET, mac, fed="f", device_id="dev-a",
                                public_key=bytes(OTHER.verify_key))
    # the separators keep ("f", "ab") and ("fa", "b") apart
    assert enroll_mac(SECRET, fed="f", device_id="ab", public_key=public) != enroll_mac(
        SECRET, fed="fa", device_id="b", public_key=public)


def test_rotation_proof_is_the_new_key_signing_the_old_one() -> None:
    new = new_signing_key()
    old_public = bytes(DEVICE.verify_key)
    proof = rotation_proof(new, old_public)
    assert check_rotation_proof(bytes(new.verify_key), proof, old_public)
    assert not check_rotation_proof(bytes(OTHER.verify_key), proof, old_public)
    assert not check_rotation_proof(bytes(new.verify_key), proof, bytes(OTHER.verify_key))
    assert not check_rotation_proof(b"short", proof, old_public)
    assert not check_rotation_proof(bytes(new.verify_key), proof[:-1], old_public)


def test_key_id_is_a_stable_short_fingerprint() -> None:
    assert key_id(bytes(DEVICE.verify_key)) == key_id(bytes(DEVICE.verify_key))
    assert len(key_id(bytes(DEVICE.verify_key))) == 16
    assert key_id(bytes(DEVICE.verify_key)) != key_id(bytes(OTHER.verify_key))


# -- header binding ---------------------------------------------------------------------------


def _header(**kw: object) -> Header:
    base: dict[str, object] = {"v": 1, "type": "status", "fed": "f", "sender": "dev-a",
                               "seq": 3, "ts_ms": 10_000}
    base.update(kw)
    return Header(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "sender", "reason"),
    [
        (_header(fed="g"), "dev-a", Reason.WRONG_FEDERATION),
        (_header(), "dev-b", Reason.SENDER_MISMATCH),
        (_header(ts_ms=10_000 + DEFAULT_LIMITS.max_future_skew_ms + 1), "dev-a",
         Reason.FUTURE_TIMESTAMP),
    ],
    ids=["wrong-fed", "sender-mismatch", "future"],
)
def test_check_header_refusals(header: Header, sender: str, reason: Reason) -> None:
    with pytest.raises(FedmqError) as info:
        check_header(header, fed="f", sender=sender, now_ms=10_000)
    assert info.value.reason is reason
    assert (info.value.sender, info.value.seq) == (header.sender, 3)


def test_check_header_accepts_within_skew_and_any_sender_when_none() -> None:
    check_header(_header(ts_ms=10_000 + DEFAULT_LIMITS.max_future_skew_ms), fed="f",
                 sender="dev-a", now_ms=10_000)
    check_header(_header(ts_ms=0), fed="f", sender=None, now_ms=10_000)


def test_a_sealed_body_cannot_be_re_signed_by_another_sender() -> None:
    """Device B copies device A's sealed update into an envelope signed by B: refused."""
    import msgpack as _mp
    from nacl.signing import SigningKey as _SK

    from schemas import (
        DecodeError,
        Reason,
        Update,
        decode,
        pack,
        seal_key,
        split,
        unseal_key,
    )

    orch, key_a, key_b = _SK.generate(), _SK.generate(), _SK.generate()
    update = Update(task_id="t", base_version=0, num_samples=1, tensors=[], train_loss=0.5)
    from_a = pack(update, key=key_a, fed="f", sender="a", seq=3, ts_ms=1,
                  seal_to=seal_key(orch.verify_key))
    sealed = _mp.unpackb(split(from_a)[0])["body"]
    signed_b = _mp.packb({"v": 1, "type": "update", "fed": "f", "sender": "b", "seq": 3,
                          "ts_ms": 1, "enc": "sealed", "to": "", "body": sealed})
    forged = _mp.packb([signed_b, key_b.sign(signed_b).signature])
    with pytest.raises(DecodeError) as info:
        decode(forged, key_b.verify_key, Update, unseal=unseal_key(orch))
    assert info.value.reason is Reason.SENDER_MISMATCH
    # the genuine one still opens
    assert decode(from_a, key_a.verify_key, Update, unseal=unseal_key(orch))[1] == update


def test_a_message_for_another_device_is_wrong_recipient() -> None:
    from nacl.signing import SigningKey as _SK

    from schemas import Ack, FedmqError, Reason, check_header, pack, verify

    orch = _SK.generate()
    for_a = pack(Ack(entries=[]), key=orch, fed="f", sender="orchestrator", seq=1, ts_ms=1,
                 to="a")
    header = verify(for_a, orch.verify_key).header
    check_header(header, fed="f", sender="orchestrator", now_ms=1, recipient="a")
    with pytest.raises(FedmqError) as info:
        check_header(header, fed="f", sender="orchestrator", now_ms=1, recipient="b")
    assert info.value.reason is Reason.WRONG_RECIPIENT


@settings(max_examples=25, deadline=None)
@given(password=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=8,
                        max_size=64))
def test_a_sealed_password_opens_only_with_the_devices_key(password: str) -> None:
    device, other = SigningKey.generate(), SigningKey.generate()
    sealed = seal_password(password, bytes(device.verify_key))
    assert password.encode() not in sealed
    assert open_password(sealed, device) == password
    assert open_password(sealed, other) is None


@settings(max_examples=50, deadline=None)
@given(junk=st.binary(max_size=400))
def test_junk_never_opens_as_a_password(junk: bytes) -> None:
    assert open_password(junk, SigningKey.generate()) is None


def test_an_oversized_or_unprintable_sealed_password_is_refused() -> None:
    device = SigningKey.generate()
    public = bytes(device.verify_key)
    assert open_password(seal_password("x" * (MAX_PASSWORD_BYTES + 1), public), device) is None
    assert open_password(seal_password("line\nbreak", public), device) is None
    assert password_digest("a") != password_digest("b")
