"""What every ``fedmq`` command group shares: mistakes are one line, not a usage block."""

from __future__ import annotations

import argparse
from typing import NoReturn


class UsageError(Exception):
    """A wrong argument: the group's ``main`` prints it as one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """Raises :class:`UsageError` instead of printing the usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)
