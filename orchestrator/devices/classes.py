"""Device classes for heterogeneous fleets: what a device's heartbeat says about its means
(cores, free memory, measured step time) decides the task settings it gets (pure).

``slow``: a measured step time above ``selection.slow_step_ms`` or less free memory than
``selection.slow_mem_mb`` — smaller batches, fewer local epochs and a sparser codec, so its
update arrives before the deadline and costs little to send. ``fast``: at least
``selection.fast_cores`` cores and (when measured) a step time well under the slow mark —
optionally more local epochs. ``standard``: everything else, with the ``[training]`` settings.
With ``selection.classes = false`` every device is ``standard``.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.config import SelectionConfig, TrainingConfig
from schemas.messages import Status
from schemas.tensors import Codec, CodecSpec

__all__ = ["CLASSES", "ClassSettings", "device_class", "task_settings"]

CLASSES = ("slow", "standard", "fast")
_FAST_STEP_SHARE = 0.25
"""A fast device steps in at most this share of the slow mark (when its step time is known)."""


@dataclass(frozen=True, slots=True)
class ClassSettings:
    device_class: str
    epochs: int
    batch_size: int
    codec: CodecSpec


def device_class(status: Status, sel: SelectionConfig) -> str:
    """``slow``, ``standard`` or ``fast`` from the metadata the device reports."""
    if not sel.classes:
        return "standard"
    step = status.step_time_ms
    if step is not None and step > sel.slow_step_ms:
        return "slow"
    if status.free_mem_mb is not None and status.free_mem_mb < sel.slow_mem_mb:
        return "slow"
    if status.cores >= sel.fast_cores and (step is None
                                           or step <= sel.slow_step_ms * _FAST_STEP_SHARE):
        return "fast"
    return "standard"


def task_settings(status: Status, sel: SelectionConfig, training: TrainingConfig
                  ) -> ClassSettings:
    """Epochs, batch size and codec for this device's next task."""
    klass = device_class(status, sel)
    if klass == "slow":
        codec = CodecSpec(Codec(sel.slow_codec), training.chunk, sel.slow_topk_fraction)
        return ClassSettings(klass, min(training.epochs, sel.slow_epochs),
                             min(training.batch_size, sel.slow_batch_size), codec)
    epochs = training.epochs
    if klass == "fast" and sel.fast_epochs is not None:
        epochs = sel.fast_epochs
    return ClassSettings(klass, epochs, training.batch_size, training.codec_spec)
