"""Command-line plumbing shared by the checks, the experiments and the ``nets`` commands: a parser whose errors are
one line and exit code 2, list-valued options, and ``type=`` factories that refuse a bad value while the command
line is parsed, naming the option (NaN, infinities, values out of range, empty list items, non-numbers).

A factory's error reads ``must ...``; ``Parser`` prints it as ``--option must ..., got '...'`` on one line:

>>> p = Parser(prog="demo")
>>> _ = p.add_argument("--steps", type=positive_int())
>>> p.parse_args(["--steps", "0"])
Traceback (most recent call last):
SystemExit: 2
"""

from __future__ import annotations

import argparse
import math
import re
import sys

__all__ = ["BadInput", "Parser", "float_list", "int_list", "positive_int", "finite_float", "float_list_of",
           "int_list_of", "choice_list"]


class BadInput(Exception):
    """Bad command-line input: the command prints this one line and exits with 2."""


_ARGUMENT_MUST = re.compile(r"^argument (\S+?)(?:/\S+)?: (must .*)$", re.S)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        """Print ``prog: error: message`` on stderr and exit with 2 (``argument --x: must ...`` reads
        ``--x must ...``)."""
        m = _ARGUMENT_MUST.match(message)
        if m:
            message = f"{m.group(1)} {m.group(2)}"
        message = " ".join(message.split())  # one line, whatever argparse put in it
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _number(item: str, text: str, what: str = "a number") -> float:
    """``item`` as a finite float (``text`` is the whole value, for the message)."""
    try:
        x = float(item)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return x


def _integer(item: str, text: str, what: str) -> int:
    """``item`` as an int (``5``, ``5.0`` and ``1e6`` are integers; ``2.5``, ``nan``, ``inf`` are not)."""
    try:
        return int(item.strip())
    except ValueError:
        pass
    try:
        x = float(item)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(x) or not x.is_integer():
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return int(x)


def _items(text: str) -> list[str]:
    """The comma-separated items of ``text``; an empty item (``0.1,,0.2``, a trailing comma, ``""``) is refused."""
    items = [x.strip() for x in text.split(",")]
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty: give at least one value")
    if any(not x for x in items):
        raise argparse.ArgumentTypeError(f"must be a comma-separated list without empty items, got {text!r}")
    return items


def _range_text(low, high, low_open, high_open) -> str:
    """``must be > 0``, ``must lie in [0, 1)``, ...: what the range asks for."""
    if high is None:
        return f"must be {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"must be {'<' if high_open else '<='} {high:g}"
    return f"must lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _in_range(x: float, low, high, low_open, high_open) -> bool:
    if low is not None and (x <= low if low_open else x < low):
        return False
    return high is None or (x < high if high_open else x <= high)


def finite_float(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False):
    """A ``type=`` for a finite float in the range [low, high] (ends open as asked; ``None``: unbounded).

    >>> finite_float(0.0, 1.0, low_open=True, high_open=True)("0.5")
    0.5
    >>> finite_float(0.0, low_open=True)("nan")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be finite, got 'nan'
    """
    def parse(text: str) -> float:
        x = _number(text, text)
        if not _in_range(x, low, high, low_open, high_open):
            raise argparse.ArgumentTypeError(f"{_range_text(low, high, low_open, high_open)}, got {text!r}")
        return x

    parse.__name__ = "number"
    return parse


def positive_int(minimum: int = 1, maximum: int | None = None):
    """A ``type=`` for an integer >= ``minimum`` (and <= ``maximum``).

    >>> positive_int()("1e3"), positive_int(0)("0")
    (1000, 0)
    >>> positive_int(2)("1")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be an integer >= 2, got '1'
    """
    what = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")

    def parse(text: str) -> int:
        value = _integer(text, text, what)
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def float_list_of(low: float | None = None, high: float | None = None, *, low_open: bool = False,
                  high_open: bool = False):
    """A ``type=`` for a comma-separated list of finite floats, each in the range (see ``finite_float``).

    >>> float_list_of(0.0, low_open=True)("0.1,0.2")
    [0.1, 0.2]
    >>> float_list_of(0.0, low_open=True)("0.1,,0.2")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a comma-separated list without empty items, got '0.1,,0.2'
    """
    def parse(text: str) -> list[float]:
        values = [_number(x, text, "a comma-separated list of numbers") for x in _items(text)]
        bad = [v for v in values if not _in_range(v, low, high, low_open, high_open)]
        if bad:
            raise argparse.ArgumentTypeError(f"{_range_text(low, high, low_open, high_open)} (every item of the "
                                             f"comma-separated list), got {text!r}")
        return values

    parse.__name__ = "list of numbers"
    return parse


def int_list_of(minimum: int = 1):
    """A ``type=`` for a comma-separated list of integers, each >= ``minimum``.

    >>> int_list_of(1)("5,10")
    [5, 10]
    """
    what = f"a comma-separated list of integers >= {minimum}"

    def parse(text: str) -> list[int]:
        values = [_integer(x, text, what) for x in _items(text)]
        if any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return values

    parse.__name__ = "list of integers"
    return parse


def choice_list(choices):
    """A ``type=`` for a comma-separated list of names from ``choices`` (no empty items, no unknown names).

    >>> choice_list(("a", "b"))("b,a")
    ['b', 'a']
    """
    choices = tuple(choices)

    def parse(text: str) -> list[str]:
        names = _items(text)
        bad = [n for n in names if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"must name some of {', '.join(choices)}; unknown: {', '.join(bad)}")
        return names

    parse.__name__ = "list of names"
    return parse


def float_list(text: str) -> list[float]:
    """A comma-separated list of finite numbers (no empty items).

    >>> float_list("0.1,0.2")
    [0.1, 0.2]
    """
    return [_number(x, text, "a comma-separated list of numbers") for x in _items(text)]


def int_list(text: str) -> list[int]:
    """A comma-separated list of integers (no empty items).

    >>> int_list("5,10")
    [5, 10]
    """
    return [_integer(x, text, "a comma-separated list of integers") for x in _items(text)]
