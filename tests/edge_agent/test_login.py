"""The agent's broker password across a rotation: kept durably before it is confirmed, tried
first and the old one after a refusal, promoted on confirmation; a new bundle starts over."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from nacl.signing import SigningKey

from edge_agent.login import BrokerLogin
from edge_agent.state import LocalState
from schemas import password_digest, seal_password

LOG = logging.getLogger("test")


@asynccontextmanager
async def _login(path: Path, bundle_password: str = "from-bundle"
                 ) -> AsyncIterator[tuple[LocalState, BrokerLogin]]:
    async with LocalState(path, device_id="dev", fed="fed") as state:
        login = BrokerLogin(state, bundle_password, logger=LOG)
        await login.load()
        yield state, login


async def test_a_new_password_is_kept_tried_first_and_promoted(tmp_path: Path) -> None:
    async with _login(tmp_path / "s.db") as (state, login):
        assert login.password() == "from-bundle"
        sealed = seal_password("fresh", bytes(state.signing_key.verify_key))
        assert await login.offer(sealed, (state.signing_key, None)) == password_digest("fresh")
        assert login.password() == "fresh"
        login.refused()  # not switched at the broker yet: the old one next
        assert login.password() == "from-bundle"
        login.refused()
        assert login.password() == "fresh"
    # durable before the receipt went out: a restart still knows both
    async with _login(tmp_path / "s.db") as (state, login):
        assert (login.current, login.next) == ("from-bundle", "fresh")
        await login.rotated()
        await login.rotated()  # a second confirmation changes nothing
        assert (login.current, login.next) == ("fresh", None)
    async with _login(tmp_path / "s.db") as (state, login):
        assert login.password() == "fresh"


async def test_a_password_sealed_to_another_key_is_ignored(tmp_path: Path) -> None:
    async with _login(tmp_path / "s.db") as (state, login):
        sealed = seal_password("attacker", bytes(SigningKey.generate().verify_key))
        assert await login.offer(sealed, (state.signing_key, None)) is None
        assert await login.offer(b"\x00" * 10_000, (state.signing_key,)) is None
        assert (login.current, login.next) == ("from-bundle", None)


async def test_a_pending_device_key_opens_a_password_sealed_to_it(tmp_path: Path) -> None:
    # the orchestrator switched to the device's new key before the device heard so
    async with _login(tmp_path / "s.db") as (state, login):
        pending = SigningKey.generate()
        sealed = seal_password("fresh", bytes(pending.verify_key))
        assert await login.offer(sealed, (state.signing_key, pending)) is not None


async def test_a_new_bundle_starts_over_from_its_password(tmp_path: Path) -> None:
    async with _login(tmp_path / "s.db") as (state, login):
        sealed = seal_password("fresh", bytes(state.signing_key.verify_key))
        await login.offer(sealed, (state.signing_key,))
        await login.rotated()
    async with _login(tmp_path / "s.db", "reissued") as (state, login):
        assert (login.password(), login.next) == ("reissued", None)
