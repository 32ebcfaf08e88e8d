"""The gradient-rule type and the registry every rule module adds to.

A rule gets the forward node, the gradient of each of its outputs (``None``: that output does
not reach the loss) and which inputs need a gradient; it writes ONNX ops and returns one
gradient name (or ``None``) per input. ``diff`` lists the inputs a gradient can flow into;
the others (shapes, axes, ratios) are constants the rule only reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .emit import Emitter, NodeView

Grads = list[str | None]
VJP = Callable[[Emitter, NodeView, Sequence[str | None], Sequence[bool]], Grads]


@dataclass(frozen=True)
class Rule:
    vjp: VJP
    diff: tuple[int, ...] | None  # None: every input

    def differentiable(self, index: int) -> bool:
        return self.diff is None or index in self.diff


RULES: dict[str, Rule] = {}


def rule(*op_types: str, diff: tuple[int, ...] | None = (0,)) -> Callable[[VJP], VJP]:
    """Register ``vjp`` as the gradient of ``op_types``."""

    def register(vjp: VJP) -> VJP:
        for op_type in op_types:
            RULES[op_type] = Rule(vjp, diff)
        return vjp

    return register
