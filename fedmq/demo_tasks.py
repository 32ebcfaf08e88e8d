"""What ``fedmq demo --task NAME`` trains: each task makes the fleet's data shards and the
server's held-out set, writes whatever its ``[model]`` section points at, and carries the
training settings and stopping defaults that suit it.

``digits``: scikit-learn's ``load_digits``, split non-IID (Dirichlet alpha 0.5), on the
built-in MLP; ``digits-cnn``: the same shards on the 2-D CNN in
``examples/models/conv2d_digits.onnx``. ``vibration``: synthetic 3-axis machine vibration
(:mod:`fedmq.datasets.vibration`), each device its own machine, on the 1-D CNN in
``examples/models/conv1d_vibration.onnx``. Imported models are compiled for training by
:func:`orchestrator.models.importer.compile_model` (what ``fedmq model import`` does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.data import LocalData
from fedmq.datasets.vibration import CLASSES, make_vibration
from fedmq.errors import ToolError
from fedmq.examples import compile_example
from fedmq.simulate import FleetData, FleetSpec, shard_data
from orchestrator.convergence.datasets import Dataset
from orchestrator.models.importer import ModelImportError, write_model_dir

__all__ = ["TASKS", "VIBRATION_MODEL", "DemoTask", "TaskData", "Training"]

VIBRATION_MODEL = Path("examples") / "models" / "conv1d_vibration.onnx"
"""The vibration task's model, relative to the checkout that holds the ``fedmq`` package."""
DIGITS_CNN_MODEL = Path("examples") / "models" / "conv2d_digits.onnx"
"""The digits-cnn task's model (a 2-D CNN over the 8x8 images), likewise."""


@dataclass(frozen=True, slots=True)
class Training:
    """The ``[training]`` settings a task trains with."""

    epochs: int
    batch_size: int
    lr: float


@dataclass(frozen=True, slots=True)
class TaskData:
    """What a task prepared: the shards, the held-out set, the ``[model]`` section's body and
    the words that name the data in the demo's first line."""

    data: FleetData
    model_section: str
    description: str


@dataclass(frozen=True, slots=True)
class DemoTask:
    name: str
    training: Training
    target: float
    """Default stopping target (held-out accuracy)."""
    max_wall_s: float
    prepare: Callable[[Path, FleetSpec], TaskData]
    """Make the data and write the model's files (if any) into the output folder."""


def _digits(out: Path, spec: FleetSpec) -> TaskData:
    data = shard_data(spec)
    model = (f'kind = "mlp"\nn_features = {data.test.X.shape[1]}\n'
             f'n_classes = {data.n_classes}\nhidden = [32]\nactivation = "relu"\n')
    return TaskData(data, model, f"load_digits (non-IID, Dirichlet alpha={spec.alpha:g}), "
                                 f"{len(data.test.X)} held-out test samples")


def _imported(out: Path, model_file: Path, *, task: str) -> str:
    """Compile ``model_file`` (relative to the checkout) into ``out/model-graphs``; the
    ``[model]`` section that points there."""
    _, imported = compile_example(model_file, needed_by=f"--task {task}")
    graphs = out / "model-graphs"
    try:
        write_model_dir(imported, graphs)
    except ModelImportError as exc:
        raise ToolError(f"cannot write {graphs}: {exc}") from None
    return (f"# {model_file} compiled for training, as\n"
            f"#   fedmq model import {model_file} --loss cross_entropy -o {graphs}\n"
            f'graphs_dir = "{graphs}"\n')


def _digits_cnn(out: Path, spec: FleetSpec) -> TaskData:
    # the same shards as digits: rows are the 8x8 images, row-major
    data = shard_data(dataclasses.replace(spec, dataset="digits"))
    return TaskData(data, _imported(out, DIGITS_CNN_MODEL, task="digits-cnn"),
                    f"load_digits (non-IID, Dirichlet alpha={spec.alpha:g}), 2-D CNN from "
                    f"{DIGITS_CNN_MODEL.name}, {len(data.test.X)} held-out test samples")


_VIBRATION_SAMPLES = 200
_VIBRATION_HELD_OUT_DEVICES = 4


def _vibration(out: Path, spec: FleetSpec) -> TaskData:
    # one generator call: the first spec.devices machines train, the last few (same seed
    # family, never seen by any agent) are the server's held-out set
    shards = make_vibration(spec.devices + _VIBRATION_HELD_OUT_DEVICES, _VIBRATION_SAMPLES,
                            seed=spec.seed)
    held_out = shards[spec.devices:]
    test = Dataset(X=np.concatenate([x for x, _ in held_out]),
                   y=np.concatenate([y for _, y in held_out]), n_classes=len(CLASSES))
    data = FleetData(shards=[LocalData(X=x, y=y) for x, y in shards[:spec.devices]],
                     test=test, n_classes=len(CLASSES))
    section = _imported(out, VIBRATION_MODEL, task="vibration")
    return TaskData(data, section,
                    f"synthetic 3-axis vibration ({len(CLASSES)} classes, "
                    f"{_VIBRATION_SAMPLES} windows of 3x128 per device, non-IID by machine), "
                    f"1-D CNN from {VIBRATION_MODEL.name}, {len(test.X)} held-out samples "
                    f"from {_VIBRATION_HELD_OUT_DEVICES} unseen machines")


TASKS: dict[str, DemoTask] = {
    "digits": DemoTask("digits", Training(epochs=2, batch_size=16, lr=0.1), target=0.94,
                       max_wall_s=150.0, prepare=_digits),
    "digits-cnn": DemoTask("digits-cnn", Training(epochs=2, batch_size=16, lr=0.2),
                           target=0.94, max_wall_s=150.0, prepare=_digits_cnn),
    "vibration": DemoTask("vibration", Training(epochs=2, batch_size=16, lr=0.1),
                          target=0.95, max_wall_s=150.0, prepare=_vibration),
}
