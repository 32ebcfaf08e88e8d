"""In-memory stand-ins for the store's small seams, for unit tests of the parts that use them."""

from __future__ import annotations

from collections.abc import Mapping


class MemoryServerState:
    """:class:`orchestrator.store.state_keys.ServerState` over a dict."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.writes = 0

    async def get_server_state(self, key: str) -> bytes | None:
        return self.values.get(key)

    async def put_server_state(self, entries: Mapping[str, bytes]) -> None:
        self.values.update(entries)
        self.writes += 1
