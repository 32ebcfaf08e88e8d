"""The running service's in-memory view of the device registry (the store is the truth).

Other processes change devices too (``fedmq device revoke`` works on the database directly).
Each such change also writes a fresh random token under ``StateKey.REGISTRY_GENERATION`` in
the store's server state (:func:`bump_generation`); the service polls that one row about once a
second and reloads the registry when it differs, so a revocation takes effect within a second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nacl.signing import VerifyKey

from orchestrator.store import Device, Store
from orchestrator.store.state_keys import StateKey

__all__ = ["DeviceView", "Registry", "bump_generation"]



async def bump_generation(store: Store) -> None:
    """Tell running services that devices changed (call after the change committed)."""
    # a random token rather than a counter: two concurrent bumps can never cancel out
    await store.put_server_state({StateKey.REGISTRY_GENERATION: os.urandom(8)})


@dataclass(frozen=True, slots=True)
class DeviceView:
    device_id: str
    role: str
    status: str
    public_key: bytes | None
    secret: bytes | None = field(repr=False)
    verify_key: VerifyKey | None = field(repr=False)

    @classmethod
    def of(cls, device: Device) -> DeviceView:
        key = VerifyKey(device.public_key) if device.public_key else None
        return cls(device.device_id, device.role, device.status, device.public_key,
                   device.enroll_secret, key)


class Registry:
    """Devices by id, loaded from ``store``; :meth:`refresh` picks up other processes' edits."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._devices: dict[str, DeviceView] = {}
        self._generation: bytes | None = None

    def __len__(self) -> int:
        return len(self._devices)

    def get(self, device_id: str) -> DeviceView | None:
        return self._devices.get(device_id)

    def all(self) -> list[DeviceView]:
        return list(self._devices.values())

    def standing(self, device_id: str) -> str | None:
        """None when the device is enrolled and in good standing, else why it is not
        (``not_enrolled`` or its status): the selection policy's ``device_ok``."""
        view = self._devices.get(device_id)
        if view is None or view.verify_key is None:
            return "not_enrolled"
        return None if view.status == "active" else view.status

    async def load(self) -> None:
        self._generation = await self._store.get_server_state(StateKey.REGISTRY_GENERATION)
        self._devices = {d.device_id: DeviceView.of(d) for d in await self._store.list_devices()}

    async def reload_device(self, device_id: str) -> DeviceView | None:
        """Re-read one device after this process changed it."""
        device = await self._store.get_device(device_id)
        if device is None:
            self._devices.pop(device_id, None)
            return None
        view = self._devices[device_id] = DeviceView.of(device)
        return view

    async def refresh(self) -> list[tuple[DeviceView | None, DeviceView | None]]:
        """Reload if another process bumped the generation; returns ``(old, new)`` for every
        device whose status or key changed (None for one added or removed)."""
        generation = await self._store.get_server_state(StateKey.REGISTRY_GENERATION)
        if generation == self._generation:
            return []
        old = self._devices
        await self.load()
        changes: list[tuple[DeviceView | None, DeviceView | None]] = []
        for device_id in old.keys() | self._devices.keys():
            before, after = old.get(device_id), self._devices.get(device_id)
            if (before is None or after is None or before.status != after.status
                    or before.public_key != after.public_key):
                changes.append((before, after))
        return changes
