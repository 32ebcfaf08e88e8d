"""Password hashes and files, config rendering, the broker supervisor and ``fedmq broker``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import pwd
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from orchestrator.broker import (
    DEFAULT_ACL,
    DEV_TEMPLATE,
    BrokerError,
    CredentialError,
    MosquittoBroker,
    PasswordFile,
    find_mosquitto,
    hash_password,
    read_pid_file,
    render_dev_config,
    verify_password,
)
from orchestrator.cli.broker import main as broker_main
from tests.support.paths import REPO
from tests.support.tls import make_certs, prod_template

MqttClientFactory = Callable[..., aiomqtt.Client]
needs_mosquitto_passwd = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed"
)


# --- password hashes ---------------------------------------------------------------------


@needs_mosquitto_passwd
def test_hash_matches_mosquitto_passwd_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "dev-a", "s3cret!"], check=True)
    user, encoded = path.read_text().strip().split(":", 1)
    _, kind, iterations, salt, _ = encoded.split("$")
    assert (user, kind, iterations) == ("dev-a", "7", "101")
    assert hash_password("s3cret!", salt=base64.b64decode(salt)) == encoded
    assert verify_password("s3cret!", encoded)
    assert not verify_password("s3cret", encoded)


@needs_mosquitto_passwd
def test_password_file_interoperates_with_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "made-by-mosquitto", "m"],
                   check=True)
    PasswordFile(path).set("made-by-fedmq", "f")
    # mosquitto_passwd must parse our lines to rewrite the file.
    subprocess.run(["mosquitto_passwd", "-b", str(path), "added-later", "l"], check=True)
    subprocess.run(["mosquitto_passwd", "-D", str(path), "made-by-mosquitto"], check=True)
    passwords = PasswordFile(path)
    assert passwords.users() == ["made-by-fedmq", "added-later"]
    assert passwords.verify("made-by-fedmq", "f")
    assert passwords.verify("added-later", "l")


def test_hash_format_and_salting() -> None:
    encoded = hash_password("pw", salt=b"0123456789ab", iterations=5)
    assert encoded.startswith("$7$5$MDEyMzQ1Njc4OWFi$")
    assert hash_password("pw") != hash_password("pw")  # random salt
    assert verify_password("pw", hash_password("pw", iterations=3))


@pytest.mark.parametrize(
    "encoded", ["", "plain", "$6$abc$def", "$7$x$AAAA$AAAA", "$7$101$!!$AAAA", "$7$0$AAAA$AAAA"]
)
def test_malformed_hash_is_a_credential_error(encoded: str) -> None:
    with pytest.raises(CredentialError):
        verify_password("pw", encoded)


@pytest.mark.parametrize("bad", [("", "pw"), ("a:b", "pw"), ("a/b", "pw"), ("a+", "pw"),
                                 ("a#", "pw"), ("a b", "pw"), ("a\nb", "pw"), ("ok", "")])
def test_invalid_user_or_password_is_refused(tmp_path: Path, bad: tuple[str, str]) -> None:
    with pytest.raises(CredentialError):
        PasswordFile(tmp_path / "passwd").set(*bad)
    assert not (tmp_path / "passwd").exists()


# --- password files ------------------------------------------------------------------------


def test_password_file_add_replace_remove_keeps_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("# provisioned by hand\nkeep:$7$101$AAAA$BBBB\n\n")
    path.chmod(0o644)
    passwords = PasswordFile(path)
    passwords.set("dev-a", "one")
    passwords.set("dev-b", "two")
    passwords.set("dev-a", "three")  # replaced in place
    assert passwords.users() == ["keep", "dev-a", "dev-b"]
    assert passwords.verify("dev-a", "three") and not passwords.verify("dev-a", "one")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert lines[:3] == ["# provisioned by hand", "keep:$7$101$AAAA$BBBB", ""]

    assert passwords.remove("dev-a") is True
    assert passwords.users() == ["keep", "dev-b"]
    before = path.stat()
    assert passwords.remove("dev-a") is False
    assert path.stat().st_mtime_ns == before.st_mtime_ns  # untouched
    assert sorted(os.listdir(tmp_path)) == ["passwd"]  # no temporary files left


def test_password_file_set_many_and_missing_file(tmp_path: Path) -> None:
    passwords = PasswordFile(tmp_path / "passwd")
    assert not passwords.exists()
    with pytest.raises(CredentialError, match="does not exist"):
        passwords.users()
    with pytest.raises(CredentialError, match="does not exist"):
        passwords.remove("x")
    passwords.set_many({f"dev-{i}": f"pw-{i}" for i in range(50)})
    assert passwords.users() == [f"dev-{i}" for i in range(50)]
    assert passwords.verify("dev-49", "pw-49")
    assert passwords.hash_of("nobody") is None
    with pytest.raises(CredentialError, match="does not exist"):
        PasswordFile(tmp_path / "no-dir" / "passwd").set("a", "b")


# --- config rendering -----------------------------------------------------------------------


def _render(tmp_path: Path, **overrides: object) -> str:
    values: dict[str, object] = {
        "port": 18830,
        "password_file": tmp_path / "passwd",
        "acl_file": tmp_path / "acl",
        "persistence_dir": tmp_path / "data",
        "log_file": tmp_path / "log",
        "pid_file": tmp_path / "pid",
        **overrides,
    }
    return render_dev_config(**values)  # type: ignore[arg-type]


def test_dev_config_is_loopback_only_authenticated_and_persistent(tmp_path: Path) -> None:
    lines = _render(tmp_path, listener_extra="certfile /x.crt\nkeyfile /x.key").splitlines()
    listeners = [line for line in lines if line.startswith("listener ")]
    assert listeners == ["listener 18830 127.0.0.1"]
    for expected in ("allow_anonymous false", f"password_file {tmp_path / 'passwd'}",
                     f"acl_file {tmp_path / 'acl'}", "persistence true",
                     f"persistence_location {tmp_path / 'data'}/", "max_queued_bytes 0",
                     "max_packet_size 8388608", "max_connections -1",
                     f"user {pwd.getpwuid(os.geteuid()).pw_name}"):
        assert expected in lines
    assert lines.index("certfile /x.crt") > lines.index("listener 18830 127.0.0.1")


@pytest.mark.parametrize(
    "overrides",
    [{"port": 0}, {"port": 70000}, {"autosave_interval": 0}, {"max_packet_size": 0},
     {"log_types": ("chatty",)}, {"log_file": Path("/tmp/x\nallow_anonymous true")}],
)
def test_bad_config_values_are_refused(tmp_path: Path, overrides: dict[str, object]) -> None:
    with pytest.raises(BrokerError):
        _render(tmp_path, **overrides)


def test_template_placeholders_must_match(tmp_path: Path) -> None:
    template = tmp_path / "t.conf.in"
    template.write_text(DEV_TEMPLATE.read_text() + "\n# {surprise}\n")
    with pytest.raises(BrokerError, match="surprise"):
        _render(tmp_path, template=template)
    template.write_text("listener {port} 127.0.0.1\n")
    with pytest.raises(BrokerError, match="no placeholders"):
        _render(tmp_path, template=template)


# --- the supervisor -------------------------------------------------------------------------


def test_missing_binary_names_the_install_command() -> None:
    with pytest.raises(BrokerError, match="apt-get install -y mosquitto"):
        find_mosquitto(path="", fallbacks=())


async def test_start_failure_surfaces_the_broker_log(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path, listener_extra="no_such_option 1", startup_timeout=5)
    with pytest.raises(BrokerError, match="no_such_option"):
        await broker.start()
    assert not broker.running


async def test_failed_start_leaves_no_process_or_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(BrokerError, match="no_such_option"):
        async with MosquittoBroker(listener_extra="no_such_option 1", startup_timeout=5):
            pass
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


async def test_port_held_by_another_process_is_an_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        broker = MosquittoBroker(tmp_path, port=holder.getsockname()[1], startup_timeout=5)
        with pytest.raises(BrokerError, match="exited"):
            await broker.start()


async def test_temporary_workdir_is_removed_and_files_are_private() -> None:
    async with MosquittoBroker(users={"dev-a": "pw"}) as broker:
        workdir = broker.workdir
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        assert read_pid_file(broker.pid_file) == broker.pid
        assert broker.acl_file.read_bytes() == DEFAULT_ACL.read_bytes()
        for private in (broker.password_file, broker.acl_file):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600
        assert PasswordFile(broker.password_file).users() == ["dev-a", "orchestrator"]
        assert PasswordFile(broker.password_file).verify(
            "orchestrator", broker.orchestrator_password
        )
    assert not broker.running and broker.pid is None
    assert not workdir.exists()


async def test_accounts_already_in_the_workdir_are_kept(
    tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    await asyncio.to_thread(PasswordFile(workdir / "passwd").set, "provisioned", "pw")
    async with MosquittoBroker(workdir, users={"dev-a": "pw-a"}) as broker:
        users = await asyncio.to_thread(PasswordFile(broker.password_file).users)
        assert users == ["provisioned", "dev-a", "orchestrator"]
        async with mqtt_client(broker, "provisioned", "pw"):
            pass


def _persistent(broker: MosquittoBroker, mqtt_client: MqttClientFactory) -> aiomqtt.Client:
    expiry = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    expiry.SessionExpiryInterval = 3600
    return mqtt_client(broker, "orchestrator", identifier="orch-persistent",
                       clean_start=False, properties=expiry)


async def _drain(client: aiomqtt.Client, count: int) -> list[bytes]:
    got: list[bytes] = []
    async with asyncio.timeout(10):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            got.append(message.payload)
            if len(got) == count:
                return got
    return got


async def test_restart_keeps_port_and_queued_messages_of_persistent_session(
    broker: MosquittoBroker, mqtt_client: MqttClientFactory
) -> None:
    fed = f"t{uuid.uuid4().hex[:10]}"
    await broker.add_user("dev-a", "pw")
    port = broker.port
    async with _persistent(broker, mqtt_client) as orch:
        await orch.subscribe(f"fl/{fed}/up/#", qos=1)
    async with mqtt_client(broker, "dev-a") as dev:  # the orchestrator is away
        for i in range(500):
            await dev.publish(f"fl/{fed}/up/dev-a/updates", str(i).encode(), qos=1)
    await broker.stop()
    assert not broker.running
    await broker.start()
    assert broker.port == port
    async with _persistent(broker, mqtt_client) as orch:
        got = await _drain(orch, 500)
    assert got == [str(i).encode() for i in range(500)]


async def test_kill_then_start_again(broker: MosquittoBroker,
                                     mqtt_client: MqttClientFactory) -> None:
    pid = broker.pid
    await broker.kill()
    assert not broker.running and broker.pid is None
    with pytest.raises(aiomqtt.MqttError):
        async with mqtt_client(broker, "orchestrator"):
            pass
    await broker.start()
    assert broker.running and broker.pid != pid
    async with mqtt_client(broker, "orchestrator"):
        pass
    with pytest.raises(BrokerError, match="already running"):
        await broker.start()


# --- prod.conf --------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
async def test_prod_config_serves_tls_with_passwords(
    tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    await asyncio.to_thread(make_certs, certs, clients=False)
    template = tmp_path / "prod.conf.in"
    template.write_text(prod_template(certs))
    tls = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    async with MosquittoBroker(tmp_path / "broker", template=template,
                               users={"dev-a": "pw"}) as broker:
        async with mqtt_client(broker, "dev-a", tls_context=tls) as dev:
            await dev.publish("fl/f/up/dev-a/status", b"over tls", qos=1)
        with pytest.raises(aiomqtt.MqttCodeError):
            async with mqtt_client(broker, "dev-a", "wrong", tls_context=tls):
                pass
        # Plain MQTT on the TLS port: a plain listener would answer this CONNECT with a
        # CONNACK (b"\x20\x02\x00\x05", not authorised); the TLS listener hangs up.
        reader, writer = await asyncio.open_connection(broker.host, broker.port)
        try:
            writer.write(bytes.fromhex("100d00044d5154540402003c000178"))
            await writer.drain()
            async with asyncio.timeout(20):
                try:
                    answer = await reader.read(4)
                except ConnectionResetError:
                    answer = b""
            assert answer == b""
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# --- the CLI ------------------------------------------------------------------------------------


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
