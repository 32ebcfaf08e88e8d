"""Mosquitto password hashes (byte for byte what ``mosquitto_passwd`` writes) and password files."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from orchestrator.broker import CredentialError, PasswordFile, hash_password, verify_password

needs_mosquitto_passwd = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed"
)


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


def test_suspend_and_restore_keep_the_hash_and_the_other_users(tmp_path: Path) -> None:
    pf = PasswordFile(tmp_path / "passwd")
    pf.set_many({"dev-a": "pw-a", "dev-b": "pw-b"})
    hashed = pf.hash_of("dev-a")
    assert pf.suspend("dev-a")
    assert pf.users() == ["dev-b"] and pf.suspended() == ["dev-a"]
    assert not pf.verify("dev-a", "pw-a")
    assert stat.S_IMODE(os.stat(pf.suspended_path).st_mode) == 0o600
    assert not pf.suspend("dev-a")  # already suspended: nothing to move
    assert not pf.restore("dev-b")  # never suspended
    assert pf.restore("dev-a")
    assert pf.hash_of("dev-a") == hashed and pf.verify("dev-a", "pw-a")
    assert sorted(pf.users()) == ["dev-a", "dev-b"] and pf.suspended() == []
