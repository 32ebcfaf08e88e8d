"""The command line the agent bench gives its step-timing children (``_agent_child`` and
``_torch_child``): one parser, so both time the same steps of the same model. Standard
library only: the torch child may run under another interpreter."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["child_parser"]


def child_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=("mlp", "conv1d"), default="mlp")
    return parser
