"""The replay window: fresh / duplicate / replay / future-timestamp, and a restart in between."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import DecodeError, Reason, ReplayWindow, Verdict


class ReferenceWindow:
    """The obvious model: every seq ever seen, and the highest one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.high = -1

    def mark(self, seq: int) -> None:
        if seq > self.high - self.size:  # ReplayWindow ignores seqs below its window
            self.seen.add(seq)
            self.high = max(self.high, seq)

    def classify(self, seq: int) -> Verdict:
        if seq > self.high:
            return Verdict.FRESH
        if self.high - seq >= self.size:
            return Verdict.REPLAY
        return Verdict.DUPLICATE if seq in self.seen else Verdict.FRESH


def test_fresh_duplicate_and_reordering_within_the_window() -> None:
    window = ReplayWindow(size=64)
    assert window.classify(0) is Verdict.FRESH
    for seq in (10, 12, 11):  # 11 arrives after 12: reordered, still fresh
        assert window.classify(seq) is Verdict.FRESH
        window.mark(seq)
    assert window.high == 12
    assert [window.classify(s) for s in (9, 10, 11, 12, 13)] == [
        Verdict.FRESH, Verdict.DUPLICATE, Verdict.DUPLICATE, Verdict.DUPLICATE, Verdict.FRESH]
    window.mark(9)
    assert window.classify(9) is Verdict.DUPLICATE


def test_a_replayed_seq_is_replay_once_the_window_moved_past_it() -> None:
    window = ReplayWindow(size=8)
    window.mark(5)
    assert window.classify(5) is Verdict.DUPLICATE
    window.mark(12)  # 12 - 5 = 7: still inside
    assert window.classify(5) is Verdict.DUPLICATE
    assert window.classify(4) is Verdict.REPLAY  # never seen, but below the window
    window.mark(13)
    assert window.classify(5) is Verdict.REPLAY
    window.mark(5)  # marking below the window is ignored, not an error
    assert (window.high, window.classify(5)) == (13, Verdict.REPLAY)


def test_a_huge_jump_forgets_the_window_without_a_huge_integer() -> None:
    window = ReplayWindow()
    window.mark(0)
    window.mark(2**62)  # a device may jump its seq; the window must not grow with the gap
    assert window.bits == 1
    assert window.classify(2**62) is Verdict.DUPLICATE
    assert window.classify(2**62 - 1) is Verdict.FRESH
    assert window.classify(0) is Verdict.REPLAY
    assert len(window.to_bytes()) == 12 + 4096 // 8


def test_future_timestamp_verdict_comes_first() -> None:
    window = ReplayWindow()
    window.mark(3)
    assert window.classify(3, ts_ms=1_000 + 301_000, now_ms=1_000) is Verdict.FUTURE_TIMESTAMP
    assert window.classify(4, ts_ms=1_000 + 300_000, now_ms=1_000) is Verdict.FRESH
    assert window.classify(4, ts_ms=2_000, now_ms=1_000, max_skew_ms=500) is \
        Verdict.FUTURE_TIMESTAMP
    assert window.classify(3, ts_ms=10**15) is Verdict.DUPLICATE  # no clock given: not checked


def test_window_size_must_be_a_positive_multiple_of_eight() -> None:
    for size in (0, -8, 12):
        with pytest.raises(ValueError):
            ReplayWindow(size=size)


@settings(max_examples=150, deadline=None)
@given(
    size=st.sampled_from([8, 16, 64, 4096]),
    marks=st.lists(st.integers(0, 300), max_size=60),
    restart_at=st.integers(0, 60),
)
def test_window_matches_the_reference_model_across_a_restart(
    size: int, marks: list[int], restart_at: int
) -> None:
    window, reference = ReplayWindow(size=size), ReferenceWindow(size)
    for i, seq in enumerate(marks):
        if i == restart_at:  # the orchestrator restarts: state is what it stored
            window = ReplayWindow.from_bytes(window.to_bytes())
        assert window.classify(seq) is reference.classify(seq)
        window.mark(seq)
        reference.mark(seq)
    restored = ReplayWindow.from_bytes(window.to_bytes())
    assert restored == window
    for seq in range(0, 320):
        assert restored.classify(seq) is reference.classify(seq), seq


@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from([8, 64, 4096]), high=st.integers(-1, 2**63 - 1),
       bits=st.integers(0, 2**64))
def test_state_round_trips(size: int, high: int, bits: int) -> None:
    window = ReplayWindow(size=size, high=high, bits=bits & ((1 << size) - 1))
    data = window.to_bytes()
    assert len(data) == 12 + size // 8
    assert ReplayWindow.from_bytes(data) == window


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 11, ReplayWindow().to_bytes()[:-1], ReplayWindow().to_bytes() + b"\x00",
     (-2).to_bytes(8, "little", signed=True) + (8).to_bytes(4, "little") + b"\x00",
     (5).to_bytes(8, "little") + (12).to_bytes(4, "little") + b"\x00" * 2,
     (5).to_bytes(8, "little") + (2**31).to_bytes(4, "little")],
    ids=["empty", "short", "truncated", "extended", "bad-mark", "bad-size", "huge-size"],
)
def test_bad_state_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        ReplayWindow.from_bytes(data)
    assert info.value.reason is Reason.MALFORMED
