"""A live bucket as the coordinator keeps it: the state machine, the members' tasks, the
masked inputs in memory, and when its current stage started — with its durable form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from schemas._convert import from_wire, to_wire
from schemas.limits import DEFAULT_LIMITS
from schemas.messages import Task
from schemas.secagg.wire import unpack_ring

from .bucket import BucketState

__all__ = ["LiveBucket"]


@dataclass
class LiveBucket:
    state: BucketState
    tasks: dict[str, Task]
    """Each member's task (its task id, and the task re-sent to a member that missed it)."""
    stage_ms: int
    """When the current stage began (its timeouts count from here)."""
    masked: dict[str, npt.NDArray[np.uint32]] = field(default_factory=dict)
    resent_ms: int = 0

    @property
    def bucket_id(self) -> str:
        return self.state.bucket_id

    def to_blob(self) -> bytes:
        blob: bytes = msgpack.packb({
            "state": self.state.to_state(),
            "tasks": {m: to_wire(t) for m, t in self.tasks.items()},
            "stage_ms": self.stage_ms,
        }, use_bin_type=True)
        return blob

    @classmethod
    def from_saved(cls, blob: bytes, inputs: dict[str, bytes]) -> LiveBucket:
        saved: dict[str, Any] = msgpack.unpackb(blob, raw=False)
        state = BucketState.from_state(saved["state"])
        tasks = {m: from_wire(Task, t, DEFAULT_LIMITS) for m, t in saved["tasks"].items()}
        masked = {m: unpack_ring(r, state.n_params, state.spec.bits) for m, r in inputs.items()}
        return cls(state, tasks, int(saved["stage_ms"]), masked)
