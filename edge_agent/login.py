"""The device's broker password, across a rotation the orchestrator starts.

The bundle's password is the first. A ``Control(new_password)`` carries a new one sealed to
the device's key; it is kept durably as *next* before the device says so
(``PasswordReceipt``), and from then on each connection attempt tries next first and, when
the broker refuses it, the current one (the broker switches to the new password only once the
orchestrator has the receipt, and drops the connection made with the old one when it does).
``Control(password_rotated)`` makes next the current password and forgets the old.

What is kept in the state file remembers which bundle password it replaced: a new bundle (a
re-provisioned device) starts over from the bundle's password.
"""

from __future__ import annotations

import logging

from nacl.signing import SigningKey

from schemas import open_password, password_digest

from .state import LocalState

__all__ = ["BrokerLogin"]

_KEY = "broker_login"


class BrokerLogin:
    """``load()``, then ``password()`` for each connection attempt (see the module doc)."""

    def __init__(self, state: LocalState, bundle_password: str, *,
                 logger: logging.Logger) -> None:
        self._state = state
        self._bundle = password_digest(bundle_password).hex()
        self.current = bundle_password
        self.next: str | None = None
        self._try_next = True
        self._log = logger

    async def load(self) -> None:
        stored = await self._state.get(_KEY)
        if not isinstance(stored, dict) or stored.get("bundle") != self._bundle:
            return  # nothing rotated yet, or a new bundle since: its password holds
        current, following = stored.get("current"), stored.get("next")
        if isinstance(current, str) and current:
            self.current = current
        self.next = following if isinstance(following, str) and following else None

    async def _save(self) -> None:
        await self._state.put(_KEY, {"bundle": self._bundle, "current": self.current,
                                     "next": self.next or ""})

    def password(self) -> str:
        """The password to try on this connection attempt."""
        if self.next is not None and self._try_next:
            return self.next
        return self.current

    def refused(self) -> None:
        """The broker refused the password just tried: the other one goes next time."""
        if self.next is not None:
            self._try_next = not self._try_next

    async def offer(self, sealed: bytes, keys: tuple[SigningKey | None, ...]) -> bytes | None:
        """Open a sealed new password with one of the device's ``keys`` and keep it as next
        (durably); its digest for the receipt, or None if it opens with none of them."""
        for key in keys:
            password = open_password(sealed, key) if key is not None else None
            if password is not None:
                break
        else:
            self._log.warning("new broker password not sealed to this device's key; ignored")
            return None
        if password != self.next:
            self.next, self._try_next = password, True
            await self._save()
            self._log.info("new broker password received and kept; confirming")
        return password_digest(password)

    async def rotated(self) -> None:
        """The broker takes only the new password now: it becomes the current one."""
        if self.next is None:
            return  # a second confirmation
        self.current, self.next = self.next, None
        await self._save()
        self._log.info("broker password rotated; the old one is forgotten")
