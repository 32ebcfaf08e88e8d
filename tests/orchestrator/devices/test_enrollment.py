"""The enrollment decision (pure): unknown, first enrollment, manual approval, bad HMAC,
re-enrollment with the same key, another key, revoked."""

from __future__ import annotations

from nacl.signing import SigningKey

from orchestrator.devices.enrollment import judge_enroll
from orchestrator.devices.registry import DeviceView
from schemas import Enroll, EnrollStatus, enroll_mac


def test_enrollment_decisions() -> None:
    key = SigningKey.generate()
    public = bytes(key.verify_key)
    secret = b"k" * 32
    good = Enroll("d", public, enroll_mac(secret, fed="f", device_id="d", public_key=public))
    bad = Enroll("d", public, b"\x00" * 32)

    def view(status: str, pk: bytes | None = None) -> DeviceView:
        return DeviceView("d", "device", status, pk, secret, None)

    judge = judge_enroll
    assert judge(None, good, fed="f", manual_approval=False).reason == "unknown_sender"
    first = judge(view("pending"), good, fed="f", manual_approval=False)
    assert first.register and first.status is EnrollStatus.ACTIVE
    held = judge(view("pending"), good, fed="f", manual_approval=True)
    assert held.register == "awaiting_approval"
    assert judge(view("pending"), bad, fed="f", manual_approval=False).reason == "bad_hmac"
    assert judge(view("pending"), good, fed="g", manual_approval=False).reason == "bad_hmac"
    again = judge(view("active", public), bad, fed="f", manual_approval=False)
    assert again.status is EnrollStatus.ACTIVE and again.register is None
    other_key = judge(view("active", b"x" * 32), good, fed="f", manual_approval=False)
    assert other_key.reason == "not_authorized"
    assert judge(view("revoked", public), good, fed="f", manual_approval=False).reason \
        == "revoked"
