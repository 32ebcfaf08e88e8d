"""``fedmq orchestrator run|check``: errors are one line and a non-zero exit status."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator.broker import pick_free_port
from orchestrator.cli import service as service_cli
from orchestrator.link.rotation import load_rotation
from orchestrator.store import Store
from orchestrator.store.state_keys import StateKey


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "o.toml"
    path.write_text(f"""
[federation]
id = "clifed"
data_dir = "state"
[broker]
embedded = false
port = {pick_free_port()}
password = "pw"
connect_timeout_s = 1.0
[model]
kind = "logistic"
n_features = 3
{extra}""")
    return path


def test_check_accepts_a_valid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert service_cli.main(["check", "--config", str(_config(tmp_path))]) == 0
    assert "ok (federation 'clifed')" in capsys.readouterr().out


def test_config_errors_exit_2_with_one_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, "[aggregation]\nk = 0\n")
    assert service_cli.main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == ("fedmq orchestrator: config error: aggregation.k: must be > 0, got 0\n")


def test_an_unreachable_broker_is_one_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert service_cli.main(["run", "--config", str(_config(tmp_path)),
                             "--log-level", "error"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fedmq orchestrator: error: cannot connect to the MQTT broker")
    assert "Traceback" not in "\n".join(err)


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert service_cli.main(["run"]) == 2
    assert "--config" in capsys.readouterr().err


def test_rotate_key_offline_records_the_request_and_refuses_a_second(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path)
    state = tmp_path / "state"
    assert service_cli.main(["rotate-key", "--config", str(path), "--grace", "60"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fedmq orchestrator: key rotation requested: new key ")
    assert (state / "orchestrator.key.next").stat().st_mode & 0o777 == 0o600
    assert (state / "orchestrator.key").exists()
    assert service_cli.main(["rotate-key", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already requested" in err
    assert service_cli.main(["rotate-key", "--config", str(path), "--grace", "0"]) == 1


def test_rotate_key_during_the_grace_is_one_line_saying_when_it_may_run_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path)
    path.write_text(path.read_text().replace('data_dir = "state"',
                                             'data_dir = "state"\nkey_grace_s = 120.0'))
    assert service_cli.main(["rotate-key", "--config", str(path)]) == 0
    capsys.readouterr()

    async def announce() -> float:  # what the running service's keys task records
        async with Store.open(tmp_path / "state" / "orchestrator.db") as store:
            rotation = await load_rotation(store)
            assert rotation is not None
            await store.put_server_state({StateKey.KEY_ROTATION: rotation.announced(
                b"signed", now_ms=0).to_bytes()})
            return rotation.grace_s

    assert asyncio.run(announce()) == 120.0  # the configured grace
    assert service_cli.main(["rotate-key", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "already announced" in err and "retires at 1970-01-01 00:02:00 UTC" in err
