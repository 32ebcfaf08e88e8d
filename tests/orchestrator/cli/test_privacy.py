"""``fedmq privacy report`` on a real store with a few accounted versions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from fedmq.cli import main as fedmq
from orchestrator.privacy import (
    AccountantStep,
    DpPolicy,
    FederationAccountant,
)
from orchestrator.store import PrivacyCharge, Store
from orchestrator.store.state_keys import StateKey

DELTA = 1e-5
POPULATION = 4
# versions 1..3 and who took part in each
VERSIONS = [["dev-a", "dev-b"], ["dev-a", "dev-c"], ["dev-a", "dev-b"]]


def _device_epsilon(k: int) -> float:
    return float(RdpAccountant().compose(dp_accounting.GaussianDpEvent(1.0), k)
                 .get_epsilon(DELTA))


# dev-a took part 3 times: a 4th would cross the budget; dev-b (2) may take one more
EPSILON_MAX = (_device_epsilon(3) + _device_epsilon(4)) / 2
POLICY = DpPolicy(mode="server", clip_norm=1.0, noise_multiplier=1.0, target_delta=DELTA,
                  epsilon_max=EPSILON_MAX)


async def _populate(path: Path) -> None:
    params = {"w": np.zeros((2, 2), np.float32)}
    async with Store.open(path) as store:
        for dev in ("dev-a", "dev-b", "dev-c", "dev-d"):
            await store.add_device(dev, secret=b"s", status="active")
        arch = await store.put_architecture(b"arch")
        await store.commit_version(params=params, kind="initial", parent=None, arch_hash=arch)
        accountant = FederationAccountant.for_policy(POLICY)
        for parent, senders in enumerate(VERSIONS):
            accountant.record_version(len(senders), POPULATION)
            await store.commit_version(
                params=params, kind="aggregate", parent=parent,
                privacy=PrivacyCharge.for_senders(senders, noise_multiplier=1.0, clip_norm=1.0,
                                                  mode="server"),
                server_state={StateKey.ACCOUNTANT: accountant.state_dict(),
                              StateKey.PRIVACY_POLICY: POLICY.to_bytes()},
            )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "orchestrator.db"
    path.parent.mkdir()
    asyncio.run(_populate(path))
    return path


def test_json_report_has_the_right_numbers(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fedmq(["privacy", "report", "--db", str(db), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    # sampling "none": three plain Gaussian mechanisms, whatever the participation
    direct = RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(1.0), 3))
    assert report["epsilon"] == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    assert report["target_delta"] == DELTA
    assert report["versions_accounted"] == 3
    assert (report["enabled"], report["mode"], report["accountant"]) == (True, "server", "rdp")
    assert (report["noise_multiplier"], report["clip_norm"]) == (1.0, 1.0)
    assert report["epsilon_max"] == pytest.approx(EPSILON_MAX)
    # which accounting gave the epsilon
    assert (report["sampling"], report["amplification"]) == ("none", False)
    assert "without amplification by subsampling" in report["accounting"]
    assert "orchestrator adds Gaussian noise" in report["noise"]
    assert report["device_amplification"] is False

    devices = {d["device_id"]: d for d in report["devices"]}
    assert list(devices) == ["dev-a", "dev-b", "dev-c", "dev-d"]
    for dev, k, left in (("dev-a", 3, False), ("dev-b", 2, True), ("dev-c", 1, True),
                         ("dev-d", 0, True)):
        assert devices[dev]["participations"] == k
        assert devices[dev]["epsilon"] == pytest.approx(_device_epsilon(k) if k else 0.0)
        assert devices[dev]["budget_left"] is left
        assert devices[dev]["budget"] == pytest.approx(EPSILON_MAX)


def test_human_report_via_config(db: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text('[federation]\nid = "site"\ndata_dir = "data"\n\n'
                      '[model]\nkind = "softmax"\nn_features = 4\nn_classes = 2\n')
    assert fedmq(["privacy", "report", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "differential privacy: on (server noise, rdp accountant)" in out
    assert "noise: the orchestrator adds Gaussian noise to each aggregate" in out
    assert ("accounting: every version charged as a Gaussian mechanism without amplification "
            'by subsampling (sampling = "none"') in out
    assert "never amplified" in out
    assert f"per-device budget epsilon {EPSILON_MAX:.2f}" in out
    assert "after 3 version(s)" in out
    for dev in ("dev-a", "dev-b", "dev-c", "dev-d"):
        assert dev in out


def _populate_as(path: Path, policy: DpPolicy, accountant_state: bytes) -> None:
    async def populate() -> None:
        async with Store.open(path) as store:
            await store.add_device("dev-a", secret=b"s", status="active")
            arch = await store.put_architecture(b"arch")
            await store.commit_version(params={"w": np.zeros(2, np.float32)}, kind="initial",
                                       parent=None, arch_hash=arch)
            await store.commit_version(
                params={"w": np.zeros(2, np.float32)}, kind="aggregate", parent=0,
                privacy=PrivacyCharge.for_senders(["dev-a"], noise_multiplier=1.0,
                                                  clip_norm=1.0, mode=policy.mode),
                server_state={StateKey.ACCOUNTANT: accountant_state,
                              StateKey.PRIVACY_POLICY: policy.to_bytes()})

    asyncio.run(populate())


def test_distributed_mode_with_poisson_sampling_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "orch.db"
    policy = DpPolicy(mode="distributed", clip_norm=1.0, noise_multiplier=1.0,
                      sampling="poisson")
    accountant = FederationAccountant.for_policy(policy)
    accountant.record_version(1, POPULATION)
    _populate_as(path, policy, accountant.state_dict())

    assert fedmq(["privacy", "report", "--db", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["mode"], report["sampling"], report["amplification"]) == (
        "distributed", "poisson", True)
    assert "optimistic" in report["accounting"]
    assert "secure bucket" in report["noise"]
    direct = RdpAccountant().compose(dp_accounting.PoissonSampledDpEvent(
        1 / POPULATION, dp_accounting.GaussianDpEvent(1.0)))
    assert report["epsilon"] == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)
    assert fedmq(["privacy", "report", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "differential privacy: on (distributed noise, rdp accountant)" in out
    assert 'Poisson-subsampled Gaussian at q = participants / population (sampling = "poisson")' \
        in out


def test_a_state_saved_before_the_setting_reports_poisson(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "orch.db"
    legacy = json.loads(FederationAccountant(1.0, DELTA, steps=[AccountantStep(0.25, 1.0, 4)])
                        .state_dict())
    del legacy["sampling"]
    policy = json.loads(POLICY.to_bytes())
    del policy["sampling"]
    _populate_as(path, DpPolicy.from_bytes(json.dumps(policy).encode()),
                 json.dumps(legacy).encode())

    assert fedmq(["privacy", "report", "--db", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["sampling"], report["amplification"]) == ("poisson", True)
    direct = RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.0)), 4))
    assert report["epsilon"] == pytest.approx(direct.get_epsilon(DELTA), rel=1e-9)


def test_store_without_dp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "orch.db"

    async def empty() -> None:
        async with Store.open(path) as store:
            await store.add_device("dev-a", secret=b"s")

    asyncio.run(empty())
    assert fedmq(["privacy", "report", "--db", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["enabled"], report["epsilon"], report["versions_accounted"]) == (
        False, None, 0)
    assert (report["sampling"], report["amplification"], report["accounting"]) == (
        None, None, None)
    assert fedmq(["privacy", "report", "--db", str(path)]) == 0
    assert "differential privacy: off" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "code", "message"), [
    (["report"], 2, "one of the arguments --config --db is required"),
    (["report", "--db", "x.db", "--config", "c.toml"], 2, "not allowed with"),
    (["report", "--config", "missing.toml"], 2, "no such config file"),
    (["report", "--db", "missing.db"], 1, "no orchestrator database at missing.db"),
])
def test_mistakes_are_one_line(args: list[str], code: int, message: str,
                               capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert fedmq(["privacy", *args]) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "missing.db").exists()  # a report never creates a database


def test_corrupt_saved_state_is_one_line(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def corrupt() -> None:
        async with Store.open(db) as store:
            await store.put_server_state({StateKey.ACCOUNTANT: b"\x00garbage"})

    asyncio.run(corrupt())
    assert fedmq(["privacy", "report", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fedmq privacy: error: unreadable federation_accountant state")
    assert err.count("\n") == 1
