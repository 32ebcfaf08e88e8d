"""Server-side evaluation of each model version on a held-out data set (ONNX Runtime).

The ``eval`` graph takes the parameters, ``X`` and (for supervised models) ``y`` and returns
``loss`` and ``metric``. ``evaluate`` is blocking: call it through ``asyncio.to_thread``
(:class:`EvaluationLoop` does, for each new version).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, MutableMapping

import numpy as np
import onnxruntime as ort

from orchestrator.config import EvaluationConfig
from orchestrator.convergence.datasets import (
    NAMED,
    Dataset,
    DatasetError,
    load_named,
    split_train_test,
)
from orchestrator.convergence.stopper import Stopper
from orchestrator.errors import OrchestratorError
from orchestrator.store import Store
from orchestrator.versions.head import VersionHead
from schemas.annex import ModelAnnex, standardize

__all__ = ["EvaluationError", "EvaluationLoop", "ServerEvaluator", "load_validation_set"]


class EvaluationError(OrchestratorError):
    """The validation set or the eval graph is unusable."""


def load_validation_set(cfg: EvaluationConfig) -> Dataset:
    """A named set's test split (``split_train_test(data, test_fraction, seed=0)``, the split
    simulations train on the other side of), or a whole ``.npz`` file; at most
    ``max_samples`` rows."""
    assert cfg.dataset is not None
    try:
        data = load_named(cfg.dataset)
        if cfg.dataset in NAMED:
            _, data = split_train_test(data, cfg.test_fraction, seed=0)
    except DatasetError as exc:
        raise EvaluationError(f"evaluation.dataset: {exc}") from None
    if len(data.X) > cfg.max_samples:
        y = data.y[: cfg.max_samples] if data.y is not None else None
        data = Dataset(data.X[: cfg.max_samples], y, data.n_classes)
    return data


class ServerEvaluator:
    def __init__(self, eval_graph: bytes, data: Dataset) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # leave the cores to ingestion
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                eval_graph, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EvaluationError(f"cannot load the eval graph: {exc}") from None
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if not {"loss", "metric"} <= outputs or "X" not in inputs:
            raise EvaluationError("the eval graph must take X and return loss and metric")
        self._feeds: dict[str, np.ndarray] = {"X": np.ascontiguousarray(data.X, np.float32)}
        if "y" in inputs:
            if data.y is None:
                raise EvaluationError("the model needs labels but the data set has none")
            self._feeds["y"] = np.ascontiguousarray(data.y, np.int64)
        self._param_names = inputs - set(self._feeds)
        self.samples = len(data.X)
        self._standardized: tuple[ModelAnnex, np.ndarray] | None = None

    def evaluate(self, params: Mapping[str, np.ndarray],
                 annex: ModelAnnex | None = None) -> dict[str, float]:
        """``annex``: the version's, whose standardisation the data goes through."""
        missing = self._param_names - params.keys()
        if missing:
            raise EvaluationError(f"parameters missing for the eval graph: {sorted(missing)}")
        feeds = dict(self._feeds)
        if annex is not None and annex.standardized:
            feeds["X"] = self._standardize(annex)
        feeds.update({name: params[name] for name in self._param_names})
        loss, metric = self._session.run(["loss", "metric"], feeds)
        return {"loss": float(loss), "metric": float(metric), "samples": float(self.samples)}

    def _standardize(self, annex: ModelAnnex) -> np.ndarray:
        if self._standardized is None or self._standardized[0] != annex:
            try:
                x = standardize(self._feeds["X"], annex)
            except ValueError as exc:
                raise EvaluationError(f"evaluation.dataset: {exc}") from None
            self._standardized = (annex, x)
        return self._standardized[1]


class EvaluationLoop:
    """The ``evaluate`` task: each new version the head reaches is evaluated (in a thread;
    versions made meanwhile are skipped) and its ``server_*`` metrics recorded, then the
    stopping rules see the metric."""

    def __init__(self, evaluator: ServerEvaluator, *, head: VersionHead, store: Store,
                 stopper: Stopper, counters: MutableMapping[str, int]) -> None:
        self._evaluator = evaluator
        self._head = head
        self._store = store
        self._stopper = stopper
        self._counters = counters
        self._changed = head.watch()
        self._evaluated: int | None = None

    async def run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            model = self._head.current
            if model.version == self._evaluated:
                continue
            metrics = await asyncio.to_thread(self._evaluator.evaluate, model.params,
                                              model.annex)
            await self._store.set_version_metrics(
                model.version, {f"server_{k}": v for k, v in metrics.items()})
            self._evaluated = model.version
            self._counters["evaluations"] += 1
            await self._stopper.on_version(model.version, metrics["metric"])
