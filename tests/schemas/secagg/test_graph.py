"""The neighbour graph: Harary-regular, symmetric, deterministic, complete when k ≥ n − 1."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.secagg import (
    SecAggError,
    holders,
    neighbour_graph,
    ring_order,
    safe_threshold,
    share_xs,
    suggested_degree,
)


def _members(n: int) -> list[str]:
    return [f"dev-{i:02d}" for i in range(n)]


@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 40), data=st.data())
def test_regular_symmetric_and_deterministic(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, n + 2))
    graph = neighbour_graph("b-1", _members(n), k)
    assert all(a in graph[b] and a != b for a in graph for b in graph[a])
    degrees = Counter(len(v) for v in graph.values())
    if k >= n - 1:
        assert degrees == {n - 1: n}
    elif k % 2 and n % 2:
        assert degrees == {k: n - 1, k + 1: 1}  # Harary H(k, n), k and n odd
    else:
        assert degrees == {k: n}
    assert neighbour_graph("b-1", reversed(_members(n)), k) == graph


def test_placement_depends_on_the_bucket() -> None:
    orders = {tuple(ring_order(f"b-{i}", _members(12))) for i in range(5)}
    assert len(orders) == 5


def test_holders_are_the_member_and_its_neighbours() -> None:
    graph = neighbour_graph("b", _members(8), 2)
    for m, peers in graph.items():
        assert set(holders(graph, m)) == {m, *peers}
    with pytest.raises(SecAggError):
        holders(graph, "stranger")


def test_share_xs_are_distinct_ranks() -> None:
    assert share_xs(["c", "a", "b"]) == {"a": 1, "b": 2, "c": 3}
    with pytest.raises(SecAggError):
        share_xs(["a", "a"])


def test_suggested_degree_grows_like_log_n() -> None:
    assert suggested_degree(1) == 0
    assert suggested_degree(5) == 4  # complete below a dozen or so
    assert suggested_degree(1024) == 30 and suggested_degree(1 << 20) == 60


def test_safe_threshold_is_a_strict_majority_of_the_honest_holders() -> None:
    assert [safe_threshold(h) for h in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert safe_threshold(10, corrupt=2) == 7
    for h in range(1, 12):
        for c in range(h):
            t = safe_threshold(h, c)
            assert 2 * (t - c) > h - c and (t == 1 or 2 * (t - 1 - c) <= h - c)
    with pytest.raises(SecAggError):
        safe_threshold(3, corrupt=3)


def test_bad_parameters_are_refused() -> None:
    for members, k in ((["a", "a", "b"], 2), (["a", "b", "c"], 0)):
        with pytest.raises(SecAggError):
            neighbour_graph("b", members, k)
    assert neighbour_graph("b", ["solo"], 0) == {"solo": ()}
