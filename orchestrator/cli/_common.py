"""What every ``fedmq`` command group shares: mistakes are one line, not a usage block."""

from __future__ import annotations

import argparse
import functools
import getpass
import sys
from collections.abc import Callable
from typing import NoReturn

from orchestrator.config import ConfigError
from orchestrator.errors import OrchestratorError

__all__ = ["Parser", "UsageError", "cli_actor", "one_line_errors"]

Main = Callable[[list[str]], int]


class UsageError(OrchestratorError):
    """A wrong argument: the group's ``main`` prints it as one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """Raises :class:`UsageError` instead of printing the usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def one_line_errors(prog: str) -> Callable[[Main], Main]:
    """Decorate a command group's ``main``: a :class:`UsageError` (a :class:`Parser`'s
    included) and a config file the schema refuses are one line on stderr and exit 2; any
    other :class:`~orchestrator.errors.OrchestratorError` or ``OSError`` (a store, broker or
    key problem, a file that cannot be written) is one line and exit 1; ``--help`` returns
    argparse's exit status."""

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str]) -> int:
            try:
                return main(argv)
            except UsageError as exc:
                print(f"{prog}: error: {exc} (try '{prog} --help')", file=sys.stderr)
                return 2
            except ConfigError as exc:
                print(f"{prog}: config error: {exc}", file=sys.stderr)
                return 2
            except (OrchestratorError, OSError) as exc:
                print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
                return 1
            except SystemExit as exc:  # --help (argparse is the only one to raise it here)
                return exc.code if isinstance(exc.code, int) else 0

        return run

    return decorate


def cli_actor() -> str:
    """Who a command run on the box acts as, in the audit log: ``cli:{login}``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name (containers)
        return "cli"
