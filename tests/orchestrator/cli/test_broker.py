"""``fedmq broker`` (and ``scripts/broker_passwd``): password files, reload, one-line mistakes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from orchestrator.broker import MosquittoBroker, PasswordFile
from orchestrator.cli.broker import main as broker_main
from tests.support.paths import REPO

MqttClientFactory = Callable[..., aiomqtt.Client]


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = broker_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_adds_lists_and_removes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "passwd")
    rc, out, _ = _run_cli(capsys, "passwd", "add", "dev-a", "--file", path, "--create")
    assert rc == 0
    generated = out.strip()
    assert PasswordFile(path).verify("dev-a", generated) and len(generated) >= 24
    rc, out, _ = _run_cli(capsys, "passwd", "add", "dev-b", "--file", path, "--password", "pw")
    assert (rc, out) == (0, "")
    assert PasswordFile(path).verify("dev-b", "pw")
    assert _run_cli(capsys, "passwd", "list", "--file", path)[:2] == (0, "dev-a\ndev-b\n")
    assert _run_cli(capsys, "passwd", "remove", "dev-a", "--file", path)[0] == 0
    assert PasswordFile(path).users() == ["dev-b"]


@pytest.mark.parametrize(
    ("argv", "rc"),
    [
        ((), 2),
        (("frobnicate",), 2),
        (("passwd", "add", "dev-a"), 2),  # no --file
        (("passwd", "add", "dev-a", "--file", "{dir}/missing"), 1),  # no --create
        (("passwd", "add", "a/b", "--file", "{dir}/p", "--create"), 1),
        (("passwd", "add", "x", "--file", "{dir}/nodir/p", "--create"), 1),
        (("passwd", "remove", "ghost", "--file", "{dir}/p"), 1),
        (("passwd", "list", "--file", "{dir}/missing"), 1),
        (("reload",), 2),
        (("reload", "--pid", "notanumber"), 2),
        (("reload", "--pid", "2147483647"), 1),
        (("reload", "--pid-file", "{dir}/missing.pid"), 1),
        (("reload", "--pid-file", "{dir}/p"), 1),  # not a pid
    ],
)
def test_cli_mistakes_give_one_line_and_nonzero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], rc: int
) -> None:
    PasswordFile(tmp_path / "p").set("someone", "pw")
    args = [a.replace("{dir}", str(tmp_path)) for a in argv]
    got_rc, out, err = _run_cli(capsys, *args)
    assert got_rc == rc
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("fedmq broker: error: ")


def test_script_wrapper_runs_without_traceback(tmp_path: Path) -> None:
    script = REPO / "scripts" / "broker_passwd"
    ok = subprocess.run([sys.executable, str(script), "add", "dev-a", "--file",
                         str(tmp_path / "p"), "--create", "--password-stdin"],
                        input="from-stdin\n", capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert PasswordFile(tmp_path / "p").verify("dev-a", "from-stdin")
    bad = subprocess.run([sys.executable, str(script), "remove", "dev-a", "--file",
                          str(tmp_path / "missing")], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


async def test_cli_reload_makes_a_removed_device_unable_to_connect(
    broker: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    await broker.add_user("dev-a", "pw")
    # Edit the file behind the supervisor's back, as an operator would, then reload by CLI.
    rc = await asyncio.to_thread(
        broker_main, ["passwd", "remove", "dev-a", "--file", str(broker.password_file)]
    )
    assert rc == 0
    rc = await asyncio.to_thread(broker_main, ["reload", "--pid-file", str(broker.pid_file)])
    assert rc == 0
    async with asyncio.timeout(20):  # SIGHUP is handled within ~0.1 s
        while True:
            try:
                async with mqtt_client(broker, "dev-a", "pw"):
                    pass
            except aiomqtt.MqttCodeError as refused:
                assert refused.rc == 135
                break
            await asyncio.sleep(0.05)
