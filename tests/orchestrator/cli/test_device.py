"""``fedmq device add|approve|revoke|list`` against a real broker password file and store."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from orchestrator.broker import MosquittoBroker, PasswordFile
from orchestrator.cli import device as device_cli
from orchestrator.store import Store
from schemas import Bundle


def _write_config(tmp_path: Path, broker: MosquittoBroker) -> Path:
    path = tmp_path / "o.toml"
    path.write_text(f"""
[federation]
id = "clifed"
data_dir = "state"
[broker]
embedded = false
host = "{broker.host}"
port = {broker.port}
advertised_host = "10.1.2.3"
password = "{broker.orchestrator_password}"
password_file = "{broker.password_file}"
pid_file = "{broker.pid_file}"
[model]
kind = "logistic"
n_features = 3
""")
    return path


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(device_cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def _reloaded(broker: MosquittoBroker, before: int) -> None:
    """Until the broker logged a reload after ``before`` earlier ones (the CLI's SIGHUP)."""
    for _ in range(100):
        if broker.log_text().count("Reloading config.") > before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the broker did not reload")


async def _connects(broker: MosquittoBroker, bundle: Bundle) -> bool:
    try:
        async with aiomqtt.Client(broker.host, broker.port, username=bundle.mqtt_username,
                                  password=bundle.mqtt_password,
                                  protocol=aiomqtt.ProtocolVersion.V5, timeout=5):
            return True
    except aiomqtt.MqttError:
        return False


async def test_add_writes_a_private_bundle_and_a_working_credential(
    tmp_path: Path, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str],
) -> None:
    config = _write_config(tmp_path, broker)
    reloads = broker.log_text().count("Reloading config.")
    out_file = tmp_path / "s1.json"
    code, _, err = await _cli(capsys, "add", "s1", "--config", str(config), "-o", str(out_file))
    assert code == 0 and "bundle written" in err
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    bundle = Bundle.from_json(out_file.read_text())
    assert (bundle.device_id, bundle.fed, bundle.broker_host) == ("s1", "clifed", "10.1.2.3")
    assert bundle.broker_port == broker.port and bundle.role == "device"
    # the model the agent checks its data against before it enrolls (logistic: classes 0, 1)
    assert (bundle.n_features, bundle.n_classes) == (3, 2)
    assert PasswordFile(broker.password_file).verify("s1", bundle.mqtt_password)
    # the CLI reloaded the running broker (SIGHUP through its pid file)
    await _reloaded(broker, reloads)
    assert await _connects(broker, bundle)
    async with Store.open(tmp_path / "state" / "orchestrator.db") as store:
        device = await store.get_device("s1")
    assert device is not None and device.status == "pending"
    assert device.enroll_secret == bytes.fromhex(bundle.enroll_secret)

    # mistakes: one line, non-zero, nothing changed
    code, _, err = await _cli(capsys, "add", "s1", "--config", str(config), "-o",
                              str(tmp_path / "again.json"))
    assert code == 1 and err == "fedmq device: error: device 's1' already exists\n"
    assert not (tmp_path / "again.json").exists()
    code, _, err = await _cli(capsys, "add", "s2", "--config", str(config), "-o", str(out_file))
    assert code == 1 and "already exists" in err and err.count("\n") == 1
    code, _, err = await _cli(capsys, "add", "bad/id", "--config", str(config))
    assert code == 2 and "invalid device id" in err and err.count("\n") == 1

    code, out, _ = await _cli(capsys, "add", "op1", "--config", str(config), "--role",
                              "operator", "-o", "-")
    assert code == 0 and Bundle.from_json(out).role == "operator"


async def test_approve_revoke_and_list(
    tmp_path: Path, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str],
) -> None:
    config = _write_config(tmp_path, broker)
    out_file = tmp_path / "d.json"
    reloads = broker.log_text().count("Reloading config.")
    assert (await _cli(capsys, "add", "d", "--config", str(config), "-o", str(out_file)))[0] == 0
    bundle = Bundle.from_json(out_file.read_text())
    await _reloaded(broker, reloads)

    code, _, err = await _cli(capsys, "approve", "d", "--config", str(config))
    assert code == 1 and "not awaiting approval (it has not enrolled yet)" in err
    async with Store.open(tmp_path / "state" / "orchestrator.db") as store:
        await store.set_key("d", b"k" * 32, status="awaiting_approval")
    code, _, err = await _cli(capsys, "approve", "d", "--config", str(config))
    assert code == 0 and "approved" in err

    code, out, _ = await _cli(capsys, "list", "--config", str(config), "--json")
    (row,) = json.loads(out)
    assert (row["device_id"], row["status"]) == ("d", "active") and row["key_id"]
    code, out, _ = await _cli(capsys, "list", "--config", str(config))
    assert out.splitlines()[0].split()[:3] == ["ID", "ROLE", "STATUS"] and "active" in out

    assert await _connects(broker, bundle)
    reloads = broker.log_text().count("Reloading config.")
    code, _, err = await _cli(capsys, "revoke", "d", "--config", str(config), "--reason", "lost",
                              "--now")
    assert code == 0 and "credential removed" in err and err.count("\n") == 1
    assert "d" not in PasswordFile(broker.password_file).users()
    await _reloaded(broker, reloads)
    assert not await _connects(broker, bundle)
    async with Store.open(tmp_path / "state" / "orchestrator.db") as store:
        device = await store.get_device("d")
        audit = await store.list_audit(device="d", event="revoked")
    assert device is not None and device.status == "revoked" and audit[0].reason == "lost"
    code, _, err = await _cli(capsys, "revoke", "d", "--config", str(config))
    assert code == 1 and "already revoked" in err
    code, _, err = await _cli(capsys, "revoke", "nobody", "--config", str(config))
    assert code == 1 and err == "fedmq device: error: no device 'nobody'\n"


async def test_revoke_leaves_the_credential_to_the_orchestrator_and_says_so(
    tmp_path: Path, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str],
) -> None:
    config = _write_config(tmp_path, broker)
    assert (await _cli(capsys, "add", "e", "--config", str(config), "-o",
                       str(tmp_path / "e.json")))[0] == 0
    code, _, err = await _cli(capsys, "revoke", "e", "--config", str(config))
    assert code == 0 and err.count("\n") == 1
    assert "its key is refused now" in err and "after 600 s" in err and "--now" in err
    assert "e" in PasswordFile(broker.password_file).users()
    async with Store.open(tmp_path / "state" / "orchestrator.db") as store:
        (row,) = await store.list_audit(device="e", event="revoked")
    assert row.detail == {"credential": "after_notice"}


@pytest.mark.parametrize(("argv", "needle"), [
    (["add"], "the following arguments are required"),
    (["list", "--config", "/nonexistent.toml"], "no such config file"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                   needle: str) -> None:
    assert device_cli.main(argv) == 2
    err: Any = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


async def test_rotate_records_the_request_for_an_enrolled_device_only(
    tmp_path: Path, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str],
) -> None:
    config = _write_config(tmp_path, broker)
    assert (await _cli(capsys, "add", "r", "--config", str(config), "-o",
                       str(tmp_path / "r.json")))[0] == 0
    code, _, err = await _cli(capsys, "rotate", "r", "--config", str(config))
    assert code == 1 and err.count("\n") == 1 and "is pending" in err  # never enrolled
    async with Store.open(tmp_path / "state" / "orchestrator.db") as store:
        await store.set_key("r", bytes(32))
    code, _, err = await _cli(capsys, "rotate", "r", "--config", str(config))
    assert code == 0 and err.count("\n") == 1 and "key rotation of 'r' requested" in err
    async with Store.open(tmp_path / "state" / "orchestrator.db") as store:
        raw = await store.get_server_state("rotate.requests")
        (row,) = await store.list_audit(device="r", event="rotate_requested")
    assert raw is not None and list(json.loads(raw)) == ["r"] and row.actor == "cli"
    code, _, err = await _cli(capsys, "rotate", "nobody", "--config", str(config))
    assert code == 1 and err == "fedmq device: error: no device 'nobody'\n"
