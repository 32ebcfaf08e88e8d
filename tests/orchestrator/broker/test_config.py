"""Rendering the development broker config: loopback only, authenticated, persistent; bad values
and template placeholders refused."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from orchestrator.broker import DEV_TEMPLATE, BrokerError, render_dev_config


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
