"""The agent's TLS context comes from the PEMs its bundle embeds; a bundle whose TLS material
is missing or broken is one readable line at start (exit 2), before any connection."""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import ssl
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.cli import main
from edge_agent.errors import ConfigError
from edge_agent.tls import tls_context, tls_dir
from schemas import Bundle
from tests.support.tls import make_certs

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    make_certs(directory)
    return directory


def _bundle(certs: Path, **kw: Any) -> Bundle:
    fields: dict[str, Any] = {
        "device_id": "dev-a", "fed": "fed", "broker_host": "127.0.0.1", "broker_port": 1,
        "mqtt_username": "dev-a", "mqtt_password": "pw",
        "orchestrator_key": secrets.token_hex(32), "enroll_secret": secrets.token_hex(32),
        "tls": True, "ca_pem": (certs / "ca.crt").read_text()}
    fields.update(kw)
    return Bundle(**fields)


def _with_client(certs: Path, name: str = "client", **kw: Any) -> Bundle:
    return _bundle(certs, client_cert_pem=(certs / f"{name}.crt").read_text(),
                   client_key_pem=(certs / f"{name}.key").read_text(), **kw)


def test_no_tls_no_context(certs: Path, tmp_path: Path) -> None:
    assert tls_context(_bundle(certs, tls=False, ca_pem=""), tmp_path / "a.db") is None


def test_the_context_trusts_only_the_embedded_ca(certs: Path, tmp_path: Path) -> None:
    context = tls_context(_bundle(certs), tmp_path / "a.db")
    assert context is not None and context.verify_mode is ssl.CERT_REQUIRED
    issuers = [dict(item[0] for item in ca["subject"])["commonName"]
               for ca in context.get_ca_certs()]
    assert issuers == ["ca"]
    assert not tls_dir(tmp_path / "a.db", "dev-a").exists()  # nothing written without a cert


def test_the_client_certificate_is_kept_private_in_the_state_dir(
    certs: Path, tmp_path: Path,
) -> None:
    state = tmp_path / "state" / "a.db"
    state.parent.mkdir()
    assert tls_context(_with_client(certs), state) is not None
    directory = tls_dir(state, "dev-a")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("client.crt", "client.key"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert (directory / "client.crt").read_text() == (certs / "client.crt").read_text()


@pytest.mark.parametrize(("change", "fragment"), [
    ({"ca_pem": ""}, "carries no CA certificate"),
    ({"ca_pem": "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"},
     "CA certificate is not usable"),
    ({"ca_file": "/nonexistent/ca.crt", "ca_pem": ""}, "cannot load CA file"),
])
def test_missing_or_broken_ca_is_one_line(certs: Path, tmp_path: Path,
                                          change: dict[str, Any], fragment: str) -> None:
    bundle = dataclasses.replace(_bundle(certs), **change)
    with pytest.raises(ConfigError, match=fragment) as caught:
        tls_context(bundle, tmp_path / "a.db")
    assert "\n" not in str(caught.value)


def test_a_key_that_is_not_the_certificates_is_one_line(certs: Path, tmp_path: Path) -> None:
    bundle = dataclasses.replace(_with_client(certs),
                                 client_key_pem=(certs / "rogue-client.key").read_text())
    with pytest.raises(ConfigError, match="client certificate or key is not usable"):
        tls_context(bundle, tmp_path / "a.db")


def test_agent_start_with_a_broken_ca_is_one_line_and_exit_2(
    certs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = _bundle(certs, ca_pem=(certs / "ca.crt").read_text()[:200])  # truncated
    path = tmp_path / "bundle.json"
    path.write_text(bundle.to_json())
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, X=rng.normal(size=(20, 4)).astype(np.float32), y=np.arange(20) % 2)
    assert main(["run", "--bundle", str(path), "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedmq agent: bad bundle") and "\n" not in err, err
    assert "CA certificate is not usable" in err
