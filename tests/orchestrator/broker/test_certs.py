"""Client certificates issued with the openssl CLI, and contexts built from PEM text."""

from __future__ import annotations

import shutil
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from orchestrator.broker import BrokerError
from orchestrator.broker.certs import (
    client_context,
    ensure_client_certificate,
    issue_client_certificate,
    read_ca_pem,
)
from tests.support.tls import make_certs

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    make_certs(directory)
    return directory


def _subject_and_purpose(cert_pem: str) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext", "extendedKeyUsage"],
                          input=cert_pem, capture_output=True, text=True, check=True).stdout


def test_issued_certificate_names_the_user_and_chains_to_the_ca(certs: Path) -> None:
    issued = issue_client_certificate("dev-7", ca_file=certs / "ca.crt",
                                      ca_key_file=certs / "ca.key", days=3)
    text = _subject_and_purpose(issued.cert_pem)
    assert "CN = dev-7" in text and "TLS Web Client Authentication" in text
    assert "PRIVATE KEY-----" in issued.key_pem
    # usable as a client credential trusting the same CA
    context = client_context(read_ca_pem(certs / "ca.crt"), issued.cert_pem, issued.key_pem)
    assert context.verify_mode is ssl.CERT_REQUIRED


def test_a_ca_key_of_another_ca_is_one_line(certs: Path) -> None:
    with pytest.raises(BrokerError, match="does not belong to the CA certificate") as caught:
        issue_client_certificate("dev-7", ca_file=certs / "ca.crt",
                                 ca_key_file=certs / "rogue-ca.key", days=3)
    assert "\n" not in str(caught.value)


def test_a_missing_ca_key_or_file_is_one_line(certs: Path, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="openssl could not sign") as caught:
        issue_client_certificate("dev-7", ca_file=certs / "ca.crt",
                                 ca_key_file=tmp_path / "nope.key", days=3)
    assert "\n" not in str(caught.value)
    with pytest.raises(BrokerError, match="cannot read the CA file"):
        read_ca_pem(tmp_path / "nope.crt")
    (tmp_path / "empty.crt").write_text("nothing\n")
    with pytest.raises(BrokerError, match="holds no PEM certificate"):
        read_ca_pem(tmp_path / "empty.crt")


def test_a_name_that_would_change_the_subject_is_refused(certs: Path) -> None:
    with pytest.raises(ValueError, match="invalid certificate name"):
        issue_client_certificate("dev/CN=orchestrator", ca_file=certs / "ca.crt",
                                 ca_key_file=certs / "ca.key", days=3)


def test_ensure_issues_once_and_keeps_the_key_private(certs: Path, tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    cert, key = ensure_client_certificate(directory, "orchestrator", ca_file=certs / "ca.crt",
                                          ca_key_file=certs / "ca.key", days=3)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    first = cert.read_text()
    assert "CN = orchestrator" in _subject_and_purpose(first)
    again = ensure_client_certificate(directory, "orchestrator", ca_file=certs / "ca.crt",
                                      ca_key_file=certs / "ca.key", days=3)
    assert again == (cert, key) and cert.read_text() == first


def test_unusable_pem_is_one_line(certs: Path) -> None:
    with pytest.raises(BrokerError, match="CA certificate is not usable"):
        client_context("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    with pytest.raises(BrokerError, match="client certificate or key is not usable"):
        client_context(read_ca_pem(certs / "ca.crt"), (certs / "client.crt").read_text(),
                       (certs / "rogue-client.key").read_text())
