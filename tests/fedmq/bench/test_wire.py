"""``fedmq bench wire --quick``: both runs happen and the figures are consistent."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from fedmq.bench.wire import flower_bytes
from fedmq.cli import main as fedmq_main

# Flower comes with the bench extra (pip install -e '.[bench]'), not with server,dev
pytestmark = pytest.mark.skipif(importlib.util.find_spec("flwr") is None,
                                reason="needs the bench extra (flwr)")


def test_flower_bytes_is_at_least_the_float32_payload() -> None:
    params = {"w": np.ones((64, 32), np.float32), "b": np.zeros(32, np.float32)}
    size = flower_bytes(params)
    assert size >= 4 * (64 * 32 + 32)
    assert size < 4 * (64 * 32 + 32) + 1024  # npy headers and protobuf framing only


def test_wire_quick_reports_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert fedmq_main(["bench", "wire", "--quick"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("fedmq_bytes_per_update", "flower_bytes_per_update", "reduction",
                "fedmq_accuracy", "float32_accuracy"):
        assert key in result
    assert 0 < result["fedmq_bytes_per_update"] < result["flower_bytes_per_update"]
    assert result["reduction"] == pytest.approx(
        result["flower_bytes_per_update"] / result["fedmq_bytes_per_update"], rel=0.01)
    # float32 sent through fedmq's envelope is about Flower's size: the codec makes the gap
    assert result["float32_fedmq_bytes_per_update"] > 2 * result["fedmq_bytes_per_update"]
    assert 0 <= result["fedmq_accuracy"] <= 1 and 0 <= result["float32_accuracy"] <= 1
    assert min(result["updates"]) > 0
