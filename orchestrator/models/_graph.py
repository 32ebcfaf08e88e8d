"""A small helper for writing ONNX graphs node by node (names, constants, value infos)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR 8 is what opset 17 shipped with; a low IR keeps older device runtimes able to load the graphs
IR_VERSION = 8
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64

Dim = int | str


class GraphBuilder:
    """Accumulates nodes, initializers (constants only), inputs and outputs of one graph."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._nodes: list[onnx.NodeProto] = []
        self._initializers: list[onnx.TensorProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._ids = itertools.count()

    def input(self, name: str, elem_type: int, shape: Sequence[Dim]) -> str:
        self._inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence[Dim]) -> None:
        """Declare ``name`` (already produced by a node) a graph output."""
        self._outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def const(
        self, value: np.ndarray | Sequence[float] | float, dtype: type = np.float32
    ) -> str:
        """An initializer holding ``value``; equal constants are shared."""
        array: np.ndarray = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        name = self._consts.get(key)
        if name is None:
            name = f"const_{next(self._ids)}"
            self._initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        """Add a single-output node; ``out`` names its output (for graph outputs)."""
        name = out or f"{op_type.lower()}_{next(self._ids)}"
        self._nodes.append(
            helper.make_node(op_type, list(inputs), [name], name=f"n_{name}", **attrs)
        )
        return name

    def serialize(self, metadata: Mapping[str, str]) -> bytes:
        graph = helper.make_graph(
            self._nodes, self._name, self._inputs, self._outputs, self._initializers
        )
        model = helper.make_model(
            graph,
            producer_name="fedmq",
            opset_imports=[helper.make_opsetid("", OPSET)],
        )
        model.ir_version = IR_VERSION
        helper.set_model_props(model, dict(metadata))
        onnx.checker.check_model(model, full_check=True)
        data: bytes = model.SerializeToString()
        return data
