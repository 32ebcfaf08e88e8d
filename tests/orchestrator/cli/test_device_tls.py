"""``fedmq device add`` with TLS: the bundle embeds the CA (and, in client-certificate mode,
the device's certificate and key); unusable TLS settings are one line and create nothing."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from orchestrator.cli import device as device_cli
from orchestrator.store import Store
from schemas import Bundle
from tests.support.tls import make_certs

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    make_certs(directory)
    return directory


def _config(tmp_path: Path, broker_tls: str) -> Path:
    path = tmp_path / "o.toml"
    path.write_text(f"""
[federation]
id = "clifed"
data_dir = "state"
[broker]
embedded = false
password = "pw"
password_file = "passwd"
tls = true
{broker_tls}
[model]
kind = "logistic"
n_features = 3
""")
    return path


async def _add(capsys: pytest.CaptureFixture[str], config: Path, out: Path,
               device: str = "s1") -> tuple[int, str]:
    code = await asyncio.to_thread(device_cli.main, ["add", device, "--config", str(config),
                                                     "-o", str(out)])
    return code, capsys.readouterr().err


def _openssl(*args: str, pem: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], input=pem, capture_output=True, text=True)


async def _devices(tmp_path: Path) -> list[str]:
    async with Store.open(tmp_path / "state" / "orchestrator.db") as store:
        return [d.device_id for d in await store.list_devices()]


async def test_client_certificate_mode_bundle(tmp_path: Path, certs: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, f'ca_file = "{certs}/ca.crt"\nclient_certificates = true\n'
                               f'ca_key_file = "{certs}/ca.key"\nclient_cert_days = 30')
    out = tmp_path / "s1.json"
    code, err = await _add(capsys, config, out)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    bundle = Bundle.from_json(out.read_text())
    assert bundle.tls and bundle.ca_pem == (certs / "ca.crt").read_text()
    assert bundle.ca_file == "" and str(certs) not in out.read_text()
    subject = await asyncio.to_thread(_openssl, "x509", "-noout", "-subject",
                                      pem=bundle.client_cert_pem)
    assert subject.returncode == 0 and "CN = s1" in subject.stdout
    verified = await asyncio.to_thread(_openssl, "verify", "-CAfile", str(certs / "ca.crt"),
                                       pem=bundle.client_cert_pem)
    assert verified.returncode == 0, verified.stderr
    assert "PRIVATE KEY" in bundle.client_key_pem


@pytest.mark.parametrize(("broker_tls", "fragment"), [
    ('ca_file = "{certs}/ca.crt"\nclient_certificates = true\n'
     'ca_key_file = "{certs}/rogue-ca.key"', "does not belong to the CA certificate"),
    ('ca_file = "{certs}/ca.crt"\nclient_certificates = true\n'
     'ca_key_file = "{certs}/missing.key"', "openssl could not sign with the CA key"),
    ('ca_file = "{certs}/missing.crt"', "cannot read the CA file"),
    ("", "broker.ca_file is not set"),
])
async def test_unusable_tls_settings_are_one_line_and_add_nothing(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str], broker_tls: str,
    fragment: str,
) -> None:
    config = _config(tmp_path, broker_tls.format(certs=certs))
    out = tmp_path / "s1.json"
    code, err = await _add(capsys, config, out)
    assert code == 1 and fragment in err and err.count("\n") == 1, err
    assert not out.exists()
    assert await _devices(tmp_path) == []
