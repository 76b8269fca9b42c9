"""Command-line plumbing shared by the checks, the experiments and the ``nets`` commands: a parser whose errors are
one line and exit code 2, and list-valued options."""

from __future__ import annotations

import argparse
import sys

__all__ = ["BadInput", "Parser", "float_list", "int_list"]


class BadInput(Exception):
    """Bad command-line input: the command prints this one line and exits with 2."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        """Print ``prog: error: message`` on stderr and exit with 2."""
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def float_list(text: str) -> list[float]:
    """A comma-separated list of numbers.

    >>> float_list("0.1,0.2")
    [0.1, 0.2]
    """
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def int_list(text: str) -> list[int]:
    """A comma-separated list of integers.

    >>> int_list("5,10")
    [5, 10]
    """
    values = float_list(text)
    if any(not v.is_integer() for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
    return [int(v) for v in values]
