"""The version a service starts from: the latest one in the store, or version 0 built from the
``[model]`` config on a fresh store."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.clock import Clock
from orchestrator.config import ModelConfig
from orchestrator.convergence.stopping import StoppingState
from orchestrator.models.architecture import (
    Architecture,
    initial_model,
    pack_architecture,
    unpack_architecture,
)
from orchestrator.store import AuditEvent, Store
from orchestrator.store.state_keys import StateKey
from orchestrator.versions.head import ModelVersion
from schemas.annex import ModelAnnex, annex_from_record
from schemas.errors import ValidationError
from schemas.tensors import Params
from schemas.topics import ORCHESTRATOR_SENDER

__all__ = ["Start", "load_start"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Start:
    model: ModelVersion
    arch: Architecture
    parent: tuple[int, Params] | None
    """The latest version's parent and its parameters: the first publication's delta base."""


async def load_start(store: Store, config: ModelConfig, clock: Clock, *,
                     standardize: bool = False) -> Start:
    """``standardize``: the federation standardises its features (``[standardize]``); until
    a version fixed the standardisation, the published model asks devices for statistics."""
    latest = await store.latest_version()
    if latest is None:
        arch, params = await asyncio.to_thread(initial_model, config)
        arch_hash = await store.put_architecture(pack_architecture(arch))
        info = await store.commit_version(
            params=params, kind="initial", parent=None, arch_hash=arch_hash,
            lineage={"source": "builder" if arch.spec is not None else "graphs_dir"},
            server_state={StateKey.STOPPING: StoppingState(clock.wall_ms()).to_bytes()},
        )
        await store.append_audit(AuditEvent("initialized", ORCHESTRATOR_SENDER, detail={
            "version": info.version, "arch_hash": arch_hash}))
    else:
        info = latest
        params = (await store.get_version(latest.version)).params
        arch = unpack_architecture(await store.get_architecture(latest.arch_hash))
        if config.spec is not None and arch.spec is not None \
                and config.spec.to_dict() != arch.spec:
            log.warning("[model] differs from the stored architecture; the federation "
                        "keeps its original model (start a new data_dir to change it)")
    parent = None
    if info.parent is not None:
        parent = (info.parent, (await store.get_version(info.parent)).params)
    annex = _annex(info.metrics.get("annex"), info.version)
    annex = replace(annex, wants_stats=standardize and not annex.standardized)
    model = ModelVersion(info.version, params, info.arch_hash, info.created_ms, info.parent,
                         annex)
    return Start(model, arch, parent)


def _annex(record: Any, version: int) -> ModelAnnex:
    if record is None:
        return ModelAnnex()
    try:
        return annex_from_record(record)
    except ValidationError as exc:
        log.warning("version %d's annex is unreadable (%s); publishing it without", version,
                    exc)
        return ModelAnnex()
