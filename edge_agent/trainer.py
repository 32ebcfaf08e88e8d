"""Local training and evaluation with plain ONNX Runtime (no onnx, no torch on the device).

A model is a set of graphs whose parameters are *inputs* (see DESIGN.md, "Models"):
``train_step`` (params, ``X``, ``y``, ``lr``, ``mu``, ``{p}_global`` → ``{p}_new``, ``loss``),
``eval`` (params, ``X``, ``y`` → ``loss``, ``metric``) and optionally ``infer``
(params, ``X`` → outputs). ``y`` is absent for unsupervised models. ``OrtModel`` checks the
contract once, at construction, and then runs the graphs with as little per-step work as it can:
parameters ping-pong between two preallocated buffer sets bound with IOBinding, and each batch
is gathered straight into a bound input buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from .contract import (
    META_KIND,
    Parameters,
    Shape,
    check_other,
    check_train_step,
    classes_from_metadata,
    param_names,
    shape_matches,
    show_shape,
    signature,
)
from .errors import ConfigError, DataError, ModelContractError, ModelRunError
from .optim import LocalOptimizer, OptimizerSpec

__all__ = ["ModelContractError", "ModelRunError", "OrtModel", "TrainResult"]


@dataclass(frozen=True)
class TrainResult:
    """Outcome of local training. ``mean_loss`` is the sample-weighted mean batch loss
    (NaN if no step ran); ``samples`` counts every sample of every step."""

    params: dict[str, np.ndarray] = field(repr=False)
    mean_loss: float
    steps: int
    samples: int
    stopped_early: bool


class OrtModel:
    """The train/eval/infer graphs of one model, loaded into ONNX Runtime sessions.

    ``intra_op_threads`` defaults to 1: on small devices one thread is usually fastest and
    leaves the rest of the board responsive. Spinning is off by default to save power.
    """

    def __init__(
        self,
        graphs: Mapping[str, bytes],
        *,
        intra_op_threads: int = 1,
        allow_spinning: bool = False,
    ) -> None:
        if intra_op_threads < 1:
            raise ConfigError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        for required in ("train_step", "eval"):
            if required not in graphs:
                raise ModelContractError(f"the {required!r} graph is missing")
        options = _session_options(intra_op_threads, allow_spinning)
        self._train = _load(graphs["train_step"], "train_step", options)
        self._eval = _load(graphs["eval"], "eval", options)
        infer = graphs.get("infer")
        self._infer = _load(infer, "infer", options) if infer is not None else None

        train_sig = signature(self._train)
        self.param_names: tuple[str, ...] = param_names(train_sig)
        self.supervised: bool = "y" in train_sig.inputs
        self.kind: str | None = train_sig.metadata.get(META_KIND)
        self.param_shapes: dict[str, Shape] = {
            name: train_sig.inputs[name][1] for name in self.param_names
        }
        check_train_step(train_sig, self.param_names, self.supervised)
        self.n_features: int | None = train_sig.inputs["X"][1][1]
        params = Parameters(self.param_names, self.param_shapes, self.supervised)
        check_other(signature(self._eval), "eval", params, outputs=("loss", "metric"))
        self.n_classes: int | None = None
        self._infer_outputs: list[str] = []
        if self._infer is not None:
            infer_sig = signature(self._infer)
            check_other(infer_sig, "infer", params, outputs=())
            self._infer_outputs = list(infer_sig.outputs)
            probs = infer_sig.outputs.get("probs")
            if probs is not None and len(probs[1]) == 2:
                self.n_classes = probs[1][1]
        if self.n_classes is None and self.supervised:
            self.n_classes = classes_from_metadata(train_sig.metadata)

    @property
    def has_infer(self) -> bool:
        return self._infer is not None

    @property
    def scores(self) -> bool:
        """The ``infer`` graph gives a per-sample ``score`` (an anomaly score)."""
        return "score" in self._infer_outputs

    # -- training --------------------------------------------------------------------------

    def train(
        self,
        params: Mapping[str, np.ndarray],
        X: np.ndarray,
        y: np.ndarray | None,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        mu: float = 0.0,
        global_params: Mapping[str, np.ndarray] | None = None,
        rng: np.random.Generator,
        should_stop: Callable[[], bool] | None = None,
        optimizer: OptimizerSpec | None = None,
    ) -> TrainResult:
        """Mini-batch training over shuffled data, ``epochs`` times (the last partial batch
        too), with ``optimizer`` (default: plain SGD, the graph's own step).

        ``mu`` > 0 adds the FedProx term towards ``global_params`` (default: the starting
        ``params``). ``should_stop`` is asked before every step; when it says yes, training
        ends there and the parameters reached so far are returned.
        """
        if not _is_int(epochs) or epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
        _check_batch_size(batch_size)
        for name, value in (("lr", lr), ("mu", mu)):
            if not np.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        start = self._check_params(params, "params", copy=True)
        anchor = (
            self._check_params(global_params, "global_params", copy=False)
            if global_params is not None
            else {name: a.copy() for name, a in start.items()}
        )
        X, y = self._check_data(X, y)
        local = (LocalOptimizer(optimizer, lr, mu, anchor)
                 if optimizer is not None and not optimizer.in_graph else None)
        runner = _StepRunner(self._train, self.param_names, start, anchor, lr, mu, X, y, local)
        n = len(X)
        batch = min(batch_size, n)
        steps = samples = 0
        loss_sum = 0.0
        stopped = False
        for _ in range(epochs):
            order = rng.permutation(n)
            for begin in range(0, n, batch):
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                index = order[begin : begin + batch]
                loss_sum += runner.step(index) * len(index)
                steps += 1
                samples += len(index)
            if stopped:
                break
        return TrainResult(
            params=runner.params(),
            mean_loss=loss_sum / samples if samples else float("nan"),
            steps=steps,
            samples=samples,
            stopped_early=stopped,
        )

    # -- evaluation and inference ----------------------------------------------------------

    def evaluate(
        self,
        params: Mapping[str, np.ndarray],
        X: np.ndarray,
        y: np.ndarray | None = None,
        *,
        batch_size: int = 4096,
    ) -> dict[str, float]:
        """``{"loss", "metric"}`` over the whole set (sample-weighted over batches)."""
        _check_batch_size(batch_size)
        feeds: dict[str, Any] = dict(self._check_params(params, "params", copy=False))
        X, y = self._check_data(X, y)
        totals = np.zeros(2)
        for begin in range(0, len(X), batch_size):
            feeds["X"] = X[begin : begin + batch_size]
            if y is not None:
                feeds["y"] = y[begin : begin + batch_size]
            loss, metric = _run(self._eval, "eval", ["loss", "metric"], feeds)
            totals += np.array([float(loss), float(metric)]) * len(feeds["X"])
        loss_mean, metric_mean = totals / len(X)
        return {"loss": float(loss_mean), "metric": float(metric_mean)}

    def predict(
        self, params: Mapping[str, np.ndarray], X: np.ndarray, *, batch_size: int = 4096
    ) -> dict[str, np.ndarray]:
        """Every output of the ``infer`` graph (e.g. ``probs``, or ``reconstruction`` and
        ``score``), concatenated over batches."""
        if self._infer is None:
            raise ModelContractError("no 'infer' graph was given, so this model cannot predict")
        _check_batch_size(batch_size)
        feeds: dict[str, Any] = dict(self._check_params(params, "params", copy=False))
        X, _ = self._check_data(X, None, labels=False)
        chunks: list[list[np.ndarray]] = []
        for begin in range(0, len(X), batch_size):
            feeds["X"] = X[begin : begin + batch_size]
            chunks.append(_run(self._infer, "infer", self._infer_outputs, feeds))
        result: dict[str, np.ndarray] = {}
        for i, name in enumerate(self._infer_outputs):
            parts = [chunk[i] for chunk in chunks]
            if any(part.ndim == 0 for part in parts):
                raise ModelContractError(f"infer output {name!r} has no batch dimension")
            result[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return result

    # -- checks ----------------------------------------------------------------------------

    def _check_params(
        self, params: Mapping[str, np.ndarray], what: str, *, copy: bool
    ) -> dict[str, np.ndarray]:
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise ModelContractError(f"{what}: missing parameter(s) {', '.join(missing)}")
        extra = sorted(set(params) - set(self.param_names))
        if extra:
            raise ModelContractError(
                f"{what}: parameter(s) {', '.join(extra)} are not inputs of the graphs"
            )
        checked: dict[str, np.ndarray] = {}
        for name in self.param_names:
            # copy=None: convert (float64, lists) when needed, share the buffer when not
            array = np.array(params[name], dtype=np.float32, copy=True if copy else None, order="C")
            if not shape_matches(array.shape, self.param_shapes[name]):
                raise ModelContractError(
                    f"{what}: parameter {name!r} has shape {array.shape}, the graphs expect "
                    f"{show_shape(self.param_shapes[name])}"
                )
            checked[name] = array
        return checked

    def _check_data(
        self, X: np.ndarray, y: np.ndarray | None, *, labels: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) == 0:
            raise DataError(f"X must be a non-empty 2-D array, got shape {X.shape}")
        if self.n_features is not None and X.shape[1] != self.n_features:
            raise DataError(f"X has {X.shape[1]} features, the model expects {self.n_features}")
        if not labels:
            return X, None
        if not self.supervised:
            if y is not None:
                raise DataError("this model is unsupervised; pass y=None")
            return X, None
        if y is None:
            raise DataError("this model is supervised; labels y are required")
        y = np.ascontiguousarray(y)
        if y.shape != (len(X),) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"y must be a 1-D integer array of length {len(X)}, got {y.dtype} {y.shape}"
            )
        y = y.astype(np.int64, copy=False)
        if y.min() < 0 or (self.n_classes is not None and y.max() >= self.n_classes):
            bound = f"below {self.n_classes}" if self.n_classes is not None else "non-negative"
            raise DataError(f"labels must be class indices {bound}; got {y.min()}..{y.max()}")
        return X, y


class _StepRunner:
    """Runs ``train_step`` with IOBinding: two parameter buffer sets, swapped every step.

    With a :class:`LocalOptimizer` the graph runs with ``lr = 1`` and ``mu = 0`` instead: the
    second set receives ``p - grad``, becomes the gradient in place, and the optimizer steps
    the first set, which stays the parameters.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        names: tuple[str, ...],
        start: dict[str, np.ndarray],
        anchor: dict[str, np.ndarray],
        lr: float,
        mu: float,
        X: np.ndarray,
        y: np.ndarray | None,
        optimizer: LocalOptimizer | None = None,
    ) -> None:
        self._session = session
        self._names = names
        self._X, self._y = X, y
        self._sets = (start, {n: np.empty_like(a) for n, a in start.items()})
        self._loss = np.zeros((), dtype=np.float32)
        self._optimizer = optimizer
        if optimizer is not None:
            lr, mu = 1.0, 0.0  # the graph then yields p - grad
        self._scalars = {"lr": np.array(lr, np.float32), "mu": np.array(mu, np.float32)}
        sources = (0, 1) if optimizer is None else (0,)
        self._bindings = tuple(self._bind(i, anchor) for i in sources)
        self._batch: tuple[np.ndarray, np.ndarray | None] | None = None
        self._turn = 0

    def _bind(self, source: int, anchor: dict[str, np.ndarray]) -> ort.IOBinding:
        binding = self._session.io_binding()
        src, dst = self._sets[source], self._sets[1 - source]
        for name in self._names:
            binding.bind_ortvalue_input(name, _ortvalue(src[name]))
            binding.bind_ortvalue_input(f"{name}_global", _ortvalue(anchor[name]))
            binding.bind_ortvalue_output(f"{name}_new", _ortvalue(dst[name]))
        for name, value in self._scalars.items():
            binding.bind_ortvalue_input(name, _ortvalue(value))
        binding.bind_ortvalue_output("loss", _ortvalue(self._loss))
        return binding

    def _use_batch_size(self, size: int) -> tuple[np.ndarray, np.ndarray | None]:
        # Rebinding happens only when the size changes (at most twice per epoch).
        xb = np.empty((size, self._X.shape[1]), dtype=np.float32)
        yb = np.empty(size, dtype=np.int64) if self._y is not None else None
        for binding in self._bindings:
            binding.bind_ortvalue_input("X", _ortvalue(xb))
            if yb is not None:
                binding.bind_ortvalue_input("y", _ortvalue(yb))
        self._batch = (xb, yb)
        return self._batch

    def step(self, index: np.ndarray) -> float:
        batch = self._batch
        if batch is None or len(batch[0]) != len(index):
            batch = self._use_batch_size(len(index))
        xb, yb = batch
        np.take(self._X, index, axis=0, out=xb)
        if yb is not None:
            assert self._y is not None
            np.take(self._y, index, out=yb)
        try:
            self._session.run_with_iobinding(self._bindings[self._turn])
        except Exception as exc:  # onnxruntime's own exception types derive from Exception
            raise ModelRunError(f"train_step failed in onnxruntime: {exc}") from exc
        if self._optimizer is None:
            self._turn = 1 - self._turn
        else:
            params, grads = self._sets
            for name in self._names:
                np.subtract(params[name], grads[name], out=grads[name])
            self._optimizer.step(params, grads)
        return float(self._loss)

    def params(self) -> dict[str, np.ndarray]:
        """The latest parameters (the set the last step wrote into)."""
        return dict(self._sets[self._turn])


# -- helpers ---------------------------------------------------------------------------------


def _session_options(threads: int, allow_spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = True
    options.log_severity_level = 4  # failures surface as ModelRunError; keep stderr quiet
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
    )
    return options


def _load(graph: bytes, name: str, options: ort.SessionOptions) -> ort.InferenceSession:
    if not isinstance(graph, bytes | bytearray | memoryview):
        raise ModelContractError(f"the {name!r} graph must be bytes, got {type(graph).__name__}")
    try:
        return ort.InferenceSession(bytes(graph), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # InvalidProtobuf, Fail, NotImplemented, ... from the binding
        raise ModelContractError(f"onnxruntime cannot load the {name!r} graph: {exc}") from exc


def _run(
    session: ort.InferenceSession, graph: str, outputs: list[str], feeds: dict[str, Any]
) -> list[np.ndarray]:
    try:
        return session.run(outputs, feeds)  # type: ignore[no-any-return]
    except Exception as exc:  # onnxruntime's own exception types derive from Exception
        raise ModelRunError(f"{graph} failed in onnxruntime: {exc}") from exc


def _ortvalue(array: np.ndarray) -> ort.OrtValue:
    # shares the numpy buffer on CPU (and keeps a reference to it), so writes are visible
    return ort.OrtValue.ortvalue_from_numpy(array)


def _check_batch_size(batch_size: int) -> None:
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
