"""One training task, start to finish, as a synchronous function for a worker thread.

``train_update`` trains the held model on the local data (stopping early when ``should_stop``
says so), takes ``local − base``, clips it to the task's global L2 norm, adds the task's local
Gaussian noise, encodes it with the task's codec through a *copy* of the error-feedback
residual, and builds the ``Update`` with its provenance. The caller signs it, commits it to the
outbox with the new residual, and only then adopts that residual.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from schemas import ErrorFeedback, Task, Update

from .data import LocalData
from .delta import add_gaussian_noise, clip_global_norm, model_delta
from .optim import OptimizerSpec
from .state import StoredModel
from .trainer import OrtModel, TrainResult


@dataclass(frozen=True, slots=True)
class TrainedUpdate:
    result: TrainResult
    train_ms: float
    update: Update | None
    """None when there is nothing to send (no step ran, or training diverged)."""
    feedback: ErrorFeedback
    """The residual after encoding ``update`` (adopt it once the update is committed)."""
    delta_norm: float | None = None
    """Global L2 norm of the delta before clipping (when the task clips)."""
    note: str = ""

    @property
    def step_time_ms(self) -> float | None:
        return self.train_ms / self.result.steps if self.result.steps else None


def train_update(
    ort: OrtModel,
    base: StoredModel,
    task: Task,
    data: LocalData,
    *,
    feedback: ErrorFeedback,
    rng: np.random.Generator,
    noise_rng: np.random.Generator,
    should_stop: Callable[[], bool] | None = None,
    device_class: str = "",
) -> TrainedUpdate:
    y = data.y if ort.supervised else None
    started = time.perf_counter()
    result = ort.train(base.params, data.X, y, epochs=task.epochs, batch_size=task.batch_size,
                       lr=task.lr, mu=task.mu, rng=rng, should_stop=should_stop,
                       optimizer=optimizer_of(task))
    train_ms = (time.perf_counter() - started) * 1000
    if result.steps == 0:
        return TrainedUpdate(result, train_ms, None, feedback, note="no step ran")
    delta = model_delta(result.params, base.params)
    if not all(np.isfinite(v).all() for v in delta.values()):
        return TrainedUpdate(result, train_ms, None, feedback,
                             note="training diverged (non-finite delta)")
    norm = None
    if task.clip_norm is not None:
        delta, norm = clip_global_norm(delta, task.clip_norm)
        if task.noise_multiplier > 0:
            delta = add_gaussian_noise(delta, task.noise_multiplier * task.clip_norm, noise_rng)
    after = ErrorFeedback(dict(feedback.residual))
    tensors = after.encode(delta, task.codec, rng)
    update = Update(
        task_id=task.task_id,
        base_version=base.version,
        num_samples=min(len(data), result.samples),
        tensors=tensors,
        local_steps=result.steps,
        train_loss=result.mean_loss,
        train_ms=train_ms,
        device_class=device_class,
        codec=task.codec.codec,
        clip_norm=task.clip_norm,
        # noise without a clip bound has no defined sensitivity: the task's noise is not applied
        noise_multiplier=task.noise_multiplier if task.clip_norm is not None else 0.0,
        optimizer=task.optimizer,
    )
    return TrainedUpdate(result, train_ms, update, after, norm)


def optimizer_of(task: Task) -> OptimizerSpec:
    """The task's optimizer; its state starts at zero here and lives for this task only."""
    return OptimizerSpec(task.optimizer.value, momentum=task.momentum, beta1=task.beta1,
                         beta2=task.beta2, weight_decay=task.weight_decay)
