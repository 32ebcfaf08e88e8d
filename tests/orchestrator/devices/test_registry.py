"""The device registry's view refreshes only when the store's generation changes."""

from __future__ import annotations

from pathlib import Path

from orchestrator.devices.registry import Registry, bump_generation
from orchestrator.store import Store


async def test_registry_refreshes_only_when_the_generation_changes(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "a.db") as mine, Store.open(tmp_path / "a.db") as other:
        await mine.add_device("d", secret=b"s" * 32)
        registry = Registry(mine)
        await registry.load()
        assert registry.get("d") is not None and registry.get("d").status == "pending"  # type: ignore[union-attr]
        await other.set_status("d", "revoked")  # another process, no bump: not seen yet
        assert await registry.refresh() == []
        await bump_generation(other)
        ((before, after),) = await registry.refresh()
        assert before is not None and after is not None
        assert (before.status, after.status) == ("pending", "revoked")
        assert await registry.refresh() == []
