"""The selection policy's eligibility rules, participation cap and fairness (pure, frozen
clock), device classes mapped to task settings, and the validation of their config keys."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from orchestrator.config import ConfigError, parse_config
from orchestrator.devices.classes import device_class, task_settings
from orchestrator.devices.selection import BasicSelection, Deferred, Selected, selection_from_config
from schemas import Codec, Status


def _policy(**kw: object) -> BasicSelection:
    return BasicSelection(concurrency=4, retry_after_s=10.0, rng=random.Random(1),
                          **kw)  # type: ignore[arg-type]


def _reason(decision: object) -> str:
    assert isinstance(decision, Deferred), decision
    return decision.reason


def test_eligibility_rules_each_give_their_reason() -> None:
    policy = _policy(require_unmetered=True, min_free_mem_mb=64.0,
                     budget_left=lambda d: d != "spent",
                     device_ok=lambda d: "isolated" if d == "iso" else None)
    def ask(device: str, status: Status) -> object:
        return policy.decide(device, status, outstanding=0, busy=False, now_ms=0)

    assert _reason(ask("iso", Status())) == "isolated"
    assert _reason(ask("spent", Status())) == "privacy_budget"
    assert _reason(ask("m", Status(metered=True))) == "metered"
    assert _reason(ask("r", Status(free_mem_mb=32.0))) == "memory"
    assert ask("ok", Status(free_mem_mb=128.0)) == Selected()
    # the device's own condition alone (what an evaluation task is also held to)
    assert policy.unfit(Status(battery_pct=5.0)) == "battery"
    assert policy.unfit(Status(battery_pct=5.0, charging=True)) is None


def test_participation_cap_defers_until_the_window_frees_a_slot() -> None:
    policy = _policy(max_tasks_per_window=2, window_s=100.0)
    assert policy.decide("a", Status(), outstanding=0, busy=False, now_ms=0) == Selected()
    assert policy.decide("a", Status(), outstanding=0, busy=False, now_ms=10_000) == Selected()
    capped = policy.decide("a", Status(), outstanding=0, busy=False, now_ms=20_000)
    assert _reason(capped) == "participation_cap"
    assert isinstance(capped, Deferred)
    # the first task leaves the window at 100 s: not before
    assert capped.retry_after_ms >= 100_000 - 20_000
    assert policy.participation("a", 20_000) == 2
    assert policy.decide("a", Status(), outstanding=0, busy=False, now_ms=100_001) == Selected()
    assert policy.participation("a", 100_001) == 2  # 10 s and 100.001 s


def test_the_fair_reserve_goes_to_under_represented_devices() -> None:
    policy = _policy(fair_reserve=0.5)  # 2 open slots, 2 reserved
    for t in range(3):  # "busy" trained three times, "fresh" never
        assert policy.decide("busy", Status(), outstanding=0, busy=False,
                             now_ms=t * 100_000) == Selected()
    assert policy.decide("other", Status(), outstanding=0, busy=False, now_ms=1) == Selected()
    # with the open slots taken, only a device below the average participation gets one
    assert _reason(policy.decide("busy", Status(), outstanding=2, busy=False,
                                 now_ms=400_000)) == "fairness"
    assert policy.decide("fresh", Status(), outstanding=2, busy=False, now_ms=400_000) \
        == Selected()
    assert _reason(policy.decide("x", Status(), outstanding=4, busy=False,
                                 now_ms=400_000)) == "concurrency"


def test_label_novelty_prefers_under_represented_labels() -> None:
    policy = _policy(fair_reserve=0.5)
    for i in range(4):
        policy.decide(f"zeros-{i}", Status(label_counts={"0": 50, "1": 5}), outstanding=0,
                      busy=False, now_ms=i)
    assert policy.label_novelty({"0": 30}) == 0.0
    assert policy.label_novelty({"2": 10}) == 1.0
    assert policy.label_novelty({}) == 0.0
    # "heavy" took part as often as everyone; only its labels can make it preferred
    policy.decide("heavy", Status(), outstanding=0, busy=False, now_ms=10)
    policy.decide("heavy", Status(), outstanding=0, busy=False, now_ms=20)
    assert _reason(policy.decide("heavy", Status(label_counts={"0": 9}), outstanding=2,
                                 busy=False, now_ms=30)) == "fairness"
    assert policy.decide("heavy", Status(label_counts={"2": 9, "3": 1}), outstanding=2,
                         busy=False, now_ms=100_000) == Selected()


def test_policy_from_config_and_device_classes(tmp_path: Path) -> None:
    config = parse_config({
        "federation": {"id": "f"}, "model": {"kind": "softmax", "n_features": 4,
                                             "n_classes": 2},
        "aggregation": {"k": 4},
        "training": {"epochs": 3, "batch_size": 64, "codec": "int8"},
        "selection": {"overcommit": 2.0, "max_tasks_per_window": 3, "require_unmetered": True,
                      "classes": True, "slow_step_ms": 40.0, "fast_epochs": 5},
    }, base_dir=tmp_path)
    policy = selection_from_config(config)
    assert (policy.concurrency, policy.max_tasks_per_window, policy.require_unmetered) == \
        (8, 3, True)
    sel, training = config.selection, config.training
    slow = task_settings(Status(step_time_ms=90.0, cores=8), sel, training)
    assert (slow.device_class, slow.epochs, slow.batch_size, slow.codec.codec) == \
        ("slow", 1, 16, Codec.TOPK)
    assert slow.codec.topk_fraction == 0.05
    assert device_class(Status(free_mem_mb=64.0), sel) == "slow"
    fast = task_settings(Status(cores=4, step_time_ms=5.0), sel, training)
    assert (fast.device_class, fast.epochs, fast.batch_size, fast.codec.codec) == \
        ("fast", 5, 64, Codec.INT8)
    standard = task_settings(Status(cores=2, step_time_ms=20.0), sel, training)
    assert (standard.device_class, standard.epochs) == ("standard", 3)
    off = parse_config({"federation": {"id": "f"},
                        "model": {"kind": "softmax", "n_features": 4, "n_classes": 2}},
                       base_dir=tmp_path)
    assert device_class(Status(step_time_ms=900.0), off.selection) == "standard"


@pytest.mark.parametrize(("section", "bad", "message"), [
    ("selection", {"max_tasks_per_window": 0}, "selection.max_tasks_per_window: must be > 0"),
    ("selection", {"fair_reserve": 1.0}, "selection.fair_reserve: must be in [0, 1)"),
    ("selection", {"overcommit": 0.5}, "selection.overcommit: must be >= 1"),
    ("selection", {"slow_codec": "zip"}, "selection.slow_codec: must be one of"),
    ("selection", {"window": 5}, "selection.window: unknown key"),
    ("evaluation", {"federated_every": -1}, "evaluation.federated_every: must be >= 0"),
    ("aggregation", {"k": 0}, "aggregation.k: must be > 0"),
    ("aggregation", {"k": "3"}, "aggregation.k: expected an integer"),
    ("aggregation", {"a": 2.0}, "aggregation.a: the polynomial staleness alpha must be in"),
    ("aggregation", {"a": 0.0}, "aggregation.a: the polynomial staleness alpha must be in"),
    ("training", {"lr": -0.1}, "training.lr: must be >= 0"),
])
def test_impossible_values_are_one_line_naming_the_key(
    tmp_path: Path, section: str, bad: dict[str, object], message: str,
) -> None:
    data: dict[str, dict[str, object]] = {
        "federation": {"id": "f"},
        "model": {"kind": "softmax", "n_features": 4, "n_classes": 2}}
    data.setdefault(section, {}).update(bad)
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=tmp_path)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_hinge_keeps_its_own_a(tmp_path: Path) -> None:
    config = parse_config({"federation": {"id": "f"},
                           "model": {"kind": "softmax", "n_features": 4, "n_classes": 2},
                           "aggregation": {"staleness": "hinge", "a": 10.0, "b": 4}},
                          base_dir=tmp_path)
    assert config.aggregation.a == 10.0
