"""The sliding window's bookkeeping (``edge_agent.window``): eviction of the oldest samples,
a holdout assignment that depends only on a sample's running index, and the bounded ledger."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.data import LocalData
from edge_agent.window import FileKey, Ledger, SampleWindow, holdout_mask


def _block(first: int, n: int, features: int = 3) -> LocalData:
    """Samples whose first feature is their running index (so tests can read it back)."""
    X = np.zeros((n, features), np.float32)
    X[:, 0] = np.arange(first, first + n)
    return LocalData(X, np.arange(first, first + n, dtype=np.int64) % 4)


@given(st.integers(1, 50), st.lists(st.integers(0, 80), max_size=12))
def test_the_window_keeps_exactly_the_newest_samples(capacity: int, sizes: list[int]) -> None:
    window = SampleWindow(capacity)
    first = 0
    for n in sizes:
        before = len(window)
        evicted = window.add(first, _block(first, n))
        assert len(window) == before + n - evicted
        first += n
    expected = np.arange(max(0, first - capacity), first)
    assert len(window) == len(expected)
    np.testing.assert_array_equal(window.indices, expected)
    train, holdout = window.split()
    assert len(train) == len(holdout) == len(expected)  # holdout 0: both are the window
    if len(expected):
        np.testing.assert_array_equal(train.X[:, 0], expected)


@given(st.integers(2, 60), st.lists(st.integers(1, 40), min_size=1, max_size=10),
       st.integers(0, 2**32))
def test_a_sample_never_changes_sides_as_the_window_slides(
    capacity: int, sizes: list[int], salt: int,
) -> None:
    window = SampleWindow(capacity, holdout=0.3, salt=salt)
    side: dict[int, bool] = {}
    first = 0
    for n in sizes:
        window.add(first, _block(first, n))
        first += n
        train, holdout = window.split()
        assert len(train) + len(holdout) == len(window)
        for held, part in ((False, train), (True, holdout)):
            for index in part.X[:, 0].astype(int):
                assert side.setdefault(int(index), held) is held


def test_the_holdout_share_is_about_the_fraction_and_salted() -> None:
    index = np.arange(20_000)
    held = holdout_mask(index, 0.2)
    assert 0.18 < held.mean() < 0.22
    assert not np.array_equal(held, holdout_mask(index, 0.2, salt=1))
    assert not holdout_mask(index, 0.0).any()


def test_a_block_with_other_features_is_refused() -> None:
    window = SampleWindow(10)
    window.add(0, _block(0, 4, features=3))
    with pytest.raises(ValueError, match="5 features, the window has 3"):
        window.add(4, _block(4, 2, features=5))


def test_the_ledger_is_bounded_and_a_watermark_stands_for_what_it_forgot() -> None:
    ledger = Ledger(3)
    keys = [FileKey(1000 + i, f"f{i}.npz", 10) for i in range(5)]
    for i, key in enumerate(keys):
        entry = ledger.record(key, 0 if i == 2 else 10)
        assert entry.first == ledger.next_index - entry.count
    assert len(ledger) == 3 and ledger.next_index == 40
    assert all(ledger.seen(k) for k in keys)  # f0, f1 only through the watermark
    assert ledger.watermark == (1001, "f1.npz")
    assert not ledger.seen(FileKey(1001, "f9.npz", 10))  # a newer name at the same mtime
    assert [e.key.name for e in ledger.newest_covering(15)] == ["f3.npz", "f4.npz"]
    back = Ledger.from_record(msgpack.unpackb(msgpack.packb(ledger.to_record())), 3)
    assert list(back) == list(ledger) and back.watermark == ledger.watermark
    assert back.next_index == 40
    assert len(Ledger.from_record("junk", 3)) == 0
