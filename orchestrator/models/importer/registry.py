"""Every op the importer can differentiate, in one table (``op_type -> Rule``)."""

from __future__ import annotations

from . import rules_basic, rules_conv, rules_shape
from .rules import RULES, Rule

# importing the rule modules fills RULES; naming them keeps the imports from looking unused
_MODULES = (rules_basic, rules_conv, rules_shape)

__all__ = ["RULES", "Rule", "supported_ops"]


def supported_ops() -> list[str]:
    return sorted(RULES)
