"""A device's broker login: the password file the broker reads, and telling it to re-read.

The operator's commands (``fedmq device …``) and the running service's flood watch both change
logins; each change is followed by :func:`reload_broker` (SIGHUP), after which Mosquitto drops
connections whose account is gone and refuses new ones.
"""

from __future__ import annotations

from orchestrator.broker import BrokerError, PasswordFile, read_pid_file
from orchestrator.broker import reload_broker as _sighup
from orchestrator.config import Config

__all__ = ["password_file", "reload_broker", "restore_login", "suspend_login"]


def reload_broker(config: Config) -> bool:
    """SIGHUP the broker if its pid file names a running process; False if none runs."""
    pid_file = config.broker_pid_file
    if pid_file is None or not pid_file.exists():
        return False
    try:
        _sighup(read_pid_file(pid_file))
    except BrokerError:
        return False  # a stale pid file: the broker reads the password file when it starts
    return True


def password_file(config: Config) -> PasswordFile | None:
    """The broker's password file, if fedmq manages it (its directory created 0700)."""
    path = config.password_file
    if path is None:
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return PasswordFile(path)


def suspend_login(config: Config, device_id: str) -> bool:
    """Disable the device's login (its hash is kept aside) and reload the broker; False if
    fedmq does not manage the password file or the device has no login there."""
    passwords = password_file(config)
    if passwords is None or not passwords.exists() or not passwords.suspend(device_id):
        return False
    reload_broker(config)
    return True


def restore_login(config: Config, device_id: str) -> bool:
    """Undo :func:`suspend_login` (the device's old password works again); False if it was
    not suspended."""
    passwords = password_file(config)
    if passwords is None or not passwords.restore(device_id):
        return False
    reload_broker(config)
    return True
