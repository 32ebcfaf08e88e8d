"""What ``fedmq demo --task NAME`` trains: each task makes the fleet's data shards and the
server's held-out set, writes whatever its ``[model]`` section points at, and carries the
training settings and stopping defaults that suit it.

``digits``: scikit-learn's ``load_digits``, split non-IID (Dirichlet alpha 0.5), on the
built-in MLP; ``digits-cnn``: the same shards on the 2-D CNN in
``examples/models/conv2d_digits.onnx``. ``vibration``: synthetic 3-axis machine vibration
(:mod:`fedmq.datasets.vibration`), each device its own machine, on the 1-D CNN in
``examples/models/conv1d_vibration.onnx``. ``anomaly``: the same machines' healthy windows as
power spectra, unlabeled, on the built-in autoencoder, with the federation's feature
standardisation and anomaly threshold (``[standardize]``, ``[anomaly]``); afterwards each
device's new windows, a quarter of them faulty, are scored against the agreed threshold.
Imported models are compiled for training by
:func:`orchestrator.models.importer.compile_model` (what ``fedmq model import`` does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.data import LocalData
from edge_agent.scoring import flag_anomalies
from edge_agent.trainer import OrtModel
from fedmq.datasets.vibration import (
    CLASSES,
    make_vibration,
    make_vibration_anomaly,
    power_spectra,
)
from fedmq.errors import ToolError
from fedmq.examples import compile_example
from fedmq.simulate import FleetData, FleetSpec, shard_data
from orchestrator.convergence.datasets import Dataset
from orchestrator.models.importer import ModelImportError, write_model_dir
from schemas.annex import ModelAnnex

__all__ = ["TASKS", "VIBRATION_MODEL", "AnomalyFigures", "AnomalyTest", "DemoTask", "TaskData",
           "Training", "score_anomalies"]

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
class AnomalyTest:
    """Samples the devices will see after training, with the truth: injected faults."""

    X: np.ndarray
    is_anomaly: np.ndarray


@dataclass(frozen=True, slots=True)
class AnomalyFigures:
    threshold: float | None
    threshold_version: int | None
    detection_rate: float | None
    """Share of the injected faults scored above the threshold."""
    false_positive_rate: float | None
    """Share of the healthy windows scored above it."""


def score_anomalies(graphs: dict[str, bytes], params: dict[str, np.ndarray], annex: ModelAnnex,
                    test: AnomalyTest) -> AnomalyFigures:
    """What the devices would flag with this model and annex (what ``AnomalyMonitor``
    counts)."""
    flagged = flag_anomalies(OrtModel(graphs), params, annex, test.X)
    if flagged is None:
        return AnomalyFigures(None, None, None, None)
    bad = test.is_anomaly
    return AnomalyFigures(annex.anomaly_threshold, annex.threshold_version,
                          float(flagged[bad].mean()), float(flagged[~bad].mean()))


@dataclass(frozen=True, slots=True)
class TaskData:
    """What a task prepared: the shards, the held-out set, the ``[model]`` section's body and
    the words that name the data in the demo's first line."""

    data: FleetData
    model_section: str
    description: str
    anomaly_test: AnomalyTest | None = None


@dataclass(frozen=True, slots=True)
class DemoTask:
    name: str
    training: Training
    target: float
    """Default stopping target (held-out accuracy)."""
    max_wall_s: float
    prepare: Callable[[Path, FleetSpec], TaskData]
    """Make the data and write the model's files (if any) into the output folder."""
    stopping: str | None = None
    """The ``[stopping]`` body, when the default (a target accuracy) does not fit (with
    ``{max_wall_s}`` and ``{max_versions}`` fields)."""
    max_versions: int = 200
    evaluation: str = ""
    """More ``[evaluation]`` keys (the ``anomaly`` task: evaluation by devices)."""
    extra_config: str = ""
    """More config sections (the ``anomaly`` task: its threshold, standardisation)."""
    metric_name: str = "accuracy"
    holdout: float = 0.2
    """The share of each device's data it keeps for evaluation."""


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


_ANOMALY_TRAIN, _ANOMALY_TEST = 400, 200


def _anomaly(out: Path, spec: FleetSpec) -> TaskData:
    # each device trains on its own machine's healthy windows (power spectra, in its sensor's
    # own units) and is later tested on new windows of the same machine, a quarter faulty;
    # the server's validation set is healthy windows of machines no device has
    shards = make_vibration_anomaly(spec.devices + _VIBRATION_HELD_OUT_DEVICES,
                                    _ANOMALY_TRAIN, _ANOMALY_TEST, seed=spec.seed)
    fleet, held_out = shards[:spec.devices], shards[spec.devices:]
    train = [LocalData(X=power_spectra(s.train), y=None) for s in fleet]
    test = Dataset(X=np.concatenate([power_spectra(s.train) for s in held_out]), y=None,
                   n_classes=0)
    n_features = train[0].n_features
    section = (f'kind = "autoencoder"\nn_features = {n_features}\nn_classes = 0\n'
               f'hidden = [64, 16, 64]\nactivation = "relu"\n')
    monitored = AnomalyTest(X=np.concatenate([power_spectra(s.test) for s in fleet]),
                            is_anomaly=np.concatenate([s.is_anomaly for s in fleet]))
    return TaskData(
        FleetData(shards=train, test=test, n_classes=0), section,
        f"synthetic 3-axis vibration as power spectra ({n_features} features, raw sensor "
        f"units), {_ANOMALY_TRAIN} healthy windows per device; afterwards "
        f"{len(monitored.X)} new windows of the same machines, "
        f"{int(monitored.is_anomaly.sum())} with injected faults",
        anomaly_test=monitored)


_ANOMALY_CONFIG = """
[anomaly]
quantile = 0.99
score_noise = 1.0
min_samples = 1000

[standardize]
enabled = true
min_devices = {min_devices}
min_samples = 1000
"""

TASKS: dict[str, DemoTask] = {
    "digits": DemoTask("digits", Training(epochs=2, batch_size=16, lr=0.1), target=0.94,
                       max_wall_s=150.0, prepare=_digits),
    "digits-cnn": DemoTask("digits-cnn", Training(epochs=2, batch_size=16, lr=0.2),
                           target=0.94, max_wall_s=150.0, prepare=_digits_cnn),
    "vibration": DemoTask("vibration", Training(epochs=2, batch_size=16, lr=0.1),
                          target=0.95, max_wall_s=150.0, prepare=_vibration),
    "anomaly": DemoTask("anomaly", Training(epochs=2, batch_size=32, lr=0.05), target=0.0,
                        max_wall_s=150.0, prepare=_anomaly,
                        stopping="max_versions = {max_versions}\nmax_wall_s = {max_wall_s}\n",
                        max_versions=60,
                        evaluation="federated_every = 1\nfederated_devices = 20\n",
                        extra_config=_ANOMALY_CONFIG, metric_name="mse", holdout=0.5),
}
