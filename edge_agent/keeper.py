"""``ModelKeeper``: the global model the device holds, loaded into ONNX Runtime.

It applies the orchestrator's model messages (``ModelReceiver``, in a worker thread), builds
the ONNX Runtime sessions for a new model (reusing them when only the parameters changed),
saves the model before adopting it, and lets a task wait for the version it names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .clock import Clock, wait_for
from .errors import ModelContractError
from .models import ModelReceiver
from .records import StoredModel
from .shared import Offload, Pulse
from .state import LocalState
from .trainer import OrtModel

__all__ = ["LoadedModel", "ModelKeeper"]


@dataclass(frozen=True, slots=True)
class LoadedModel:
    stored: StoredModel
    ort: OrtModel


class ModelKeeper:
    def __init__(self, state: LocalState, receiver: ModelReceiver, *, offload: Offload,
                 clock: Clock, intra_op_threads: int, logger: logging.Logger) -> None:
        self._state = state
        self._receiver = receiver
        self._offload = offload
        self._clock = clock
        self._threads = intra_op_threads
        self._log = logger
        self._adopted = Pulse()
        self.current: LoadedModel | None = None

    @property
    def version(self) -> int | None:
        return self.current.stored.version if self.current is not None else None

    async def load(self) -> None:
        """The model kept in the state file, if it is still usable."""
        stored = await self._state.load_model()
        if stored is None:
            return
        try:
            self.current = LoadedModel(stored, await self._build(stored.graphs))
        except ModelContractError as exc:
            self._log.error("stored model v%d is unusable (%s); waiting for a new one",
                            stored.version, exc)

    async def receive(self, kind: str, payload: bytes, topic: str) -> StoredModel | None:
        """Apply one model message; returns the model adopted because of it, if any.
        Raises ``FedmqError`` or ``ModelContractError`` for anything forged or unusable."""
        current = self.current.stored if self.current is not None else None
        sha = topic.rsplit("/", 1)[-1] if kind == "chunk" else None
        received = await self._offload.run(self._receiver.handle, kind, payload, current, sha)
        if received.model is None:
            self._log.debug("model message on %s: %s", topic, received.note)
            return None
        await self._adopt(received.model, received.note)
        return received.model

    async def wait_for_version(self, version: int, within_s: float) -> LoadedModel | None:
        """The held model once it is at least ``version``, or None after ``within_s``."""
        try:
            return await wait_for(self._clock, self._until(version), within_s)
        except TimeoutError:
            return None

    async def _until(self, version: int) -> LoadedModel:
        while self.current is None or self.current.stored.version < version:
            await self._adopted.wait()
        return self.current

    async def _adopt(self, model: StoredModel, note: str) -> None:
        old = self.current
        if old is not None and old.stored.graphs == model.graphs:
            ort = old.ort
        else:
            ort = await self._build(model.graphs)  # ModelContractError → refused
        await self._state.save_model(model)
        self.current = LoadedModel(model, ort)
        self._log.info("model %s adopted%s", note, " (federation stopped)" if model.stopped else "")
        self._adopted.fire()

    async def _build(self, graphs: dict[str, bytes]) -> OrtModel:
        return await self._offload.run(OrtModel, graphs, intra_op_threads=self._threads)
