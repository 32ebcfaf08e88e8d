"""The model contract, checked once when a model's graphs are loaded (see DESIGN.md, "Models").

``train_step`` takes the parameters, ``X``, ``y`` (supervised only), ``lr``, ``mu`` and one
``{p}_global`` per parameter, and returns ``{p}_new`` per parameter and ``loss``; ``eval`` and
``infer`` take the parameters and ``X`` (``eval`` also ``y``). Everything here reads the
signatures ONNX Runtime reports and raises ``ModelContractError`` saying what does not fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

from .errors import ModelContractError

META_PARAMS = "fedmq.params"
META_KIND = "fedmq.kind"
META_SPEC = "fedmq.spec"
DATA_INPUTS = frozenset({"X", "y", "lr", "mu"})
FLOAT = "tensor(float)"
INT64 = "tensor(int64)"

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class Signature:
    """A graph's inputs and outputs (element type and shape) and its metadata."""

    inputs: dict[str, tuple[str, Shape]]
    outputs: dict[str, tuple[str, Shape]]
    metadata: dict[str, str]


@dataclass(frozen=True)
class Parameters:
    """What the ``train_step`` graph says about the parameters, for checking the others."""

    names: tuple[str, ...]
    shapes: dict[str, Shape]
    supervised: bool


def signature(session: ort.InferenceSession) -> Signature:
    def shape(arg: Any) -> Shape:
        return tuple(d if isinstance(d, int) else None for d in (arg.shape or ()))

    return Signature(
        inputs={a.name: (a.type, shape(a)) for a in session.get_inputs()},
        outputs={a.name: (a.type, shape(a)) for a in session.get_outputs()},
        metadata=dict(session.get_modelmeta().custom_metadata_map),
    )


def param_names(sig: Signature) -> tuple[str, ...]:
    """The parameter inputs of ``train_step``, in the order its metadata lists them."""
    derived = tuple(
        n for n in sig.inputs if n not in DATA_INPUTS and not n.endswith("_global")
    )
    listed = sig.metadata.get(META_PARAMS)
    if listed:
        names = tuple(n for n in listed.split(",") if n)
        if set(names) != set(derived):
            raise ModelContractError(
                f"train_step: metadata lists parameters {', '.join(names)} but the graph's "
                f"parameter inputs are {', '.join(derived)}"
            )
        derived = names
    if not derived:
        raise ModelContractError("train_step: the graph has no parameter inputs")
    return derived


def classes_from_metadata(metadata: dict[str, str]) -> int | None:
    try:
        value = json.loads(metadata[META_SPEC])["n_classes"]
    except (KeyError, TypeError, ValueError):
        return None
    return value if isinstance(value, int) and value >= 2 else None


def check_train_step(sig: Signature, names: tuple[str, ...], supervised: bool) -> None:
    expected = {"X": FLOAT, "lr": FLOAT, "mu": FLOAT}
    if supervised:
        expected["y"] = INT64
    for name in names:
        expected[name] = expected[f"{name}_global"] = FLOAT
    _check_inputs(sig, "train_step", expected)
    for name in names:
        if sig.inputs[f"{name}_global"][1] != sig.inputs[name][1]:
            raise ModelContractError(
                f"train_step: input '{name}_global' has shape "
                f"{show_shape(sig.inputs[f'{name}_global'][1])}, "
                f"but {name!r} has {show_shape(sig.inputs[name][1])}"
            )
    x_shape = sig.inputs["X"][1]
    if len(x_shape) != 2:
        raise ModelContractError(f"train_step: X must be 2-D, the graph says {x_shape}")
    for name in ("lr", "mu"):
        if sig.inputs[name][1] != ():
            raise ModelContractError(f"train_step: {name!r} must be a scalar (shape [])")
    _check_outputs(sig, "train_step", [f"{n}_new" for n in names] + ["loss"])


def check_other(sig: Signature, graph: str, params: Parameters, outputs: tuple[str, ...]) -> None:
    """``eval`` or ``infer``: the same parameters as ``train_step``, and ``outputs``."""
    expected = {"X": FLOAT, **dict.fromkeys(params.names, FLOAT)}
    if params.supervised and graph == "eval":
        expected["y"] = INT64
    _check_inputs(sig, graph, expected)
    for name in params.names:
        shape = sig.inputs[name][1]
        if not shapes_compatible(shape, params.shapes[name]):
            raise ModelContractError(
                f"{graph}: parameter {name!r} has shape {show_shape(shape)}, train_step "
                f"says {show_shape(params.shapes[name])}"
            )
    _check_outputs(sig, graph, list(outputs))
    if not sig.outputs:
        raise ModelContractError(f"{graph}: the graph has no outputs")


def _check_inputs(sig: Signature, graph: str, expected: dict[str, str]) -> None:
    missing = [n for n in expected if n not in sig.inputs]
    if missing:
        raise ModelContractError(f"{graph}: missing input(s) {', '.join(missing)}")
    extra = [n for n in sig.inputs if n not in expected]
    if extra:
        raise ModelContractError(f"{graph}: unexpected input(s) {', '.join(extra)}")
    for name, elem in expected.items():
        if sig.inputs[name][0] != elem:
            raise ModelContractError(
                f"{graph}: input {name!r} is {sig.inputs[name][0]}, expected {elem}"
            )


def _check_outputs(sig: Signature, graph: str, expected: list[str]) -> None:
    missing = [n for n in expected if n not in sig.outputs]
    if missing:
        raise ModelContractError(f"{graph}: missing output(s) {', '.join(missing)}")
    for name in expected:
        if sig.outputs[name][0] != FLOAT:
            raise ModelContractError(
                f"{graph}: output {name!r} is {sig.outputs[name][0]}, expected {FLOAT}"
            )


def shape_matches(actual: tuple[int, ...], declared: Shape) -> bool:
    return len(actual) == len(declared) and all(
        d is None or d == a for a, d in zip(actual, declared, strict=True)
    )


def shapes_compatible(a: Shape, b: Shape) -> bool:
    return len(a) == len(b) and all(
        x is None or y is None or x == y for x, y in zip(a, b, strict=True)
    )


def show_shape(shape: Shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
