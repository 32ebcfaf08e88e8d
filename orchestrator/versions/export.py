"""Export a model version as a plain ONNX inference model (params baked in, input ``X``)
that ``onnxruntime`` loads with nothing from fedmq installed. A version that cannot be
exported raises :class:`orchestrator.models.ExportError`."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from orchestrator.models import ExportError, export_inference
from orchestrator.models.architecture import unpack_architecture
from orchestrator.store import Store

__all__ = ["ExportError", "export_version"]


async def export_version(store: Store, version: int, path: str | os.PathLike[str]) -> Path:
    """Write ``version`` to ``path``; returns the path. Raises the store's ``NotFoundError``
    for an unknown version."""
    model = await store.get_version(version)
    arch = unpack_architecture(await store.get_architecture(model.info.arch_hash))
    infer = arch.graphs.get("infer")
    if infer is None:
        raise ExportError(f"version {version}'s architecture has no inference graph")
    data = await asyncio.to_thread(export_inference, infer, model.params)
    out = Path(path)
    await asyncio.to_thread(out.write_bytes, data)
    return out
