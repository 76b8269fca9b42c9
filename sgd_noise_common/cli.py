"""Command-line plumbing shared by the checks, the experiments and the ``nets`` commands: a parser whose errors are
one line and exit code 2, list-valued options, and ``type=`` factories that refuse a bad value while the command
line is parsed, naming the option (NaN, infinities, values out of range, empty list items, non-numbers); and the
settings helper, which derives a command line and its JSON from a settings dataclass (``setting``, ``add_settings``,
``from_args``, ``options_dict``), so that each setting is declared once, in its field.

A factory's error reads ``must ...``; ``Parser`` prints it as ``--option must ..., got '...'`` on one line:

>>> p = Parser(prog="demo")
>>> _ = p.add_argument("--steps", type=positive_int())
>>> p.parse_args(["--steps", "0"])
Traceback (most recent call last):
SystemExit: 2
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import types
import typing

__all__ = ["BadInput", "Parser", "float_list", "int_list", "positive_int", "finite_float", "float_list_of",
           "int_list_of", "choice_list", "setting", "add_settings", "from_args", "options_dict", "option_name",
           "check_field_types", "required_fields", "parse_range"]


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


# ------------------------------------------------------------------------------------------- settings dataclasses
# A settings dataclass is the one place a setting is declared: its name, type and default in the field, its one-line
# help, range and choices in the field's metadata. The command line (``add_settings``), the settings back from it
# (``from_args``) and the settings in a result's JSON (``options_dict``) are derived from the fields.
#
# Metadata keys (all optional; ``setting`` writes them):
#   help      the option's one-line help; "(default X)" is appended unless it says "(default" itself or the
#             default is None or a bool (argparse shows a flag's default).
#   range     the allowed numbers, "> 0", ">= 2", "< 1", "[0, 1)", "(0, 1)": a number (every item of a tuple) is
#             refused outside it while the command line is parsed (``finite_float``, ``positive_int``, ...).
#   choices   the allowed strings (a tuple of strings: ``choice_list``).
#   type      an explicit argparse ``type=`` (it replaces the one derived from the annotation and range).
#   option    the option string, when it is not ``--`` + the field's name with dashes.
#   metavar   argparse's metavar.
#   cli       False: no command-line option (the field is then set from Python only).
#   required  True: a dict read back (``config.json``) must name this field (see ``required_fields``).
#
# Types: ``bool`` is ``--flag/--no-flag`` (``argparse.BooleanOptionalAction``); ``tuple[float, ...]``,
# ``tuple[int, ...]`` and ``tuple[str, ...]`` are comma-separated lists; ``X | None`` takes X's option with the
# default None; ``float`` and ``int`` without a range are argparse's plain ``float``/``int`` (the dataclass's own
# validation then names a bad value).


def setting(default=dataclasses.MISSING, *, help: str, range: str | None = None, choices=None, type=None,  # noqa: A002
            option: str | None = None, metavar: str | None = None, cli: bool = True, required: bool = False,
            default_factory=dataclasses.MISSING) -> dataclasses.Field:
    """A dataclass field that carries its command-line option: ``field(default=..., metadata={"help": ...})``.

    >>> @dataclasses.dataclass(frozen=True)
    ... class S:
    ...     eta: float = setting(0.1, help="learning rate", range="> 0")
    ...     sizes: tuple[int, ...] = setting((5, 10), help="batch sizes", range=">= 1", option="--batch-size")
    ...     rotate: bool = setting(False, help="rotate H")
    >>> p = Parser(prog="demo")
    >>> add_settings(p, S)
    >>> from_args(S, p.parse_args(["--eta", "0.2", "--batch-size", "4,8", "--rotate"]))
    S(eta=0.2, sizes=(4, 8), rotate=True)
    >>> options_dict(S())
    {'eta': 0.1, 'batch_size': [5, 10], 'rotate': False}
    """
    meta = {"help": help}
    for key, value in (("range", range), ("choices", choices), ("type", type), ("option", option),
                       ("metavar", metavar)):
        if value is not None:
            meta[key] = tuple(value) if key == "choices" else value
    if not cli:
        meta["cli"] = False
    if required:
        meta["required"] = True
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_BOUND = re.compile(r"^\s*(>=|>|<=|<)\s*(\S+)\s*$")
_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


def parse_range(text: str) -> tuple[float | None, float | None, bool, bool]:
    """``(low, high, low_open, high_open)`` of a range written ``"> 0"``, ``">= 2"``, ``"<= 1"`` or ``"[0, 1)"``
    (``None``: unbounded; ``inf`` may be written).

    >>> parse_range("[0, 1)"), parse_range("> 0")
    ((0.0, 1.0, False, True), (0.0, None, True, False))
    """
    m = _BOUND.match(text)
    if m:
        op, x = m.group(1), float(m.group(2))
        return (x, None, op == ">", False) if op.startswith(">") else (None, x, False, op == "<")
    m = _INTERVAL.match(text)
    if not m:
        raise ValueError(f"a range is written '> 0', '>= 2' or '[0, 1)', got {text!r}")
    low, high = float(m.group(2)), float(m.group(3))
    return (None if math.isinf(low) else low, None if math.isinf(high) else high, m.group(1) == "(",
            m.group(4) == ")")


def _int_bounds(name: str, text: str) -> tuple[int, int | None]:
    """The least and greatest integer a range allows (``positive_int``'s ``minimum`` and ``maximum``)."""
    low, high, low_open, high_open = parse_range(text)
    if low is None:
        raise ValueError(f"field {name}: an integer range needs a lower bound, got {text!r}")
    minimum = math.floor(low) + 1 if low_open else math.ceil(low)
    maximum = None if high is None else (math.ceil(high) - 1 if high_open else math.floor(high))
    return minimum, maximum


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What a field's annotation says: its base type (``float``, ``int``, ``bool``, ``str``, ``tuple``), the type
    of a tuple's items, and whether it may be None."""

    base: type
    item: type | None
    optional: bool


def _kind(annotation) -> _Kind:
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        if len(rest) != 1:
            raise TypeError(f"a setting is one type or None, got {annotation!r}")
        annotation = rest[0]
        args = typing.get_args(annotation)
    origin = typing.get_origin(annotation) or annotation
    if origin is tuple:
        return _Kind(tuple, args[0] if args else None, optional)
    if origin not in (bool, int, float, str):
        raise TypeError(f"a setting is a bool, int, float, str or tuple, got {annotation!r}")
    return _Kind(origin, None, optional)


def _kinds(cls) -> dict[str, _Kind]:
    """``{field name: _Kind}`` of a settings dataclass (its annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _kind(hints[f.name]) for f in dataclasses.fields(cls)}


def option_name(cls, name: str) -> str:
    """The command-line option of field ``name`` of ``cls``: its ``option`` metadata, else ``--`` + the name with
    dashes (``batch_size`` -> ``--batch-size``)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.metadata.get("option", "--" + name.replace("_", "-"))


def _dest(f: dataclasses.Field) -> str:
    """The attribute of the parsed arguments that holds field ``f`` (argparse's ``dest`` of its option)."""
    return f.metadata.get("option", "--" + f.name).lstrip("-").replace("-", "_")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"setting {f.name} has no default: every option needs one")


def _show(value) -> str:
    """A default as the help shows it: numbers with ``:g``, tuples comma-separated."""
    if isinstance(value, (tuple, list)):
        return ",".join(_show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _argparse_type(f: dataclasses.Field, kind: _Kind):
    """The ``type=`` of field ``f``'s option: its ``type`` metadata, or one derived from its annotation and range."""
    meta = f.metadata
    if "type" in meta:
        return meta["type"]
    rng = meta.get("range")
    if kind.base is tuple:
        if kind.item is str:
            return choice_list(meta["choices"]) if "choices" in meta else None
        if kind.item is int:
            return int_list if rng is None else int_list_of(_int_bounds(f.name, rng)[0])
        if kind.item is float:
            if rng is None:
                return float_list
            low, high, low_open, high_open = parse_range(rng)
            return float_list_of(low, high, low_open=low_open, high_open=high_open)
        raise TypeError(f"setting {f.name}: a tuple needs its item type, e.g. tuple[float, ...], and none was given")
    if kind.base is float:
        if rng is None:
            return float
        low, high, low_open, high_open = parse_range(rng)
        return finite_float(low, high, low_open=low_open, high_open=high_open)
    if kind.base is int:
        return int if rng is None else positive_int(*_int_bounds(f.name, rng))
    return None  # str


def add_settings(parser: argparse.ArgumentParser, cls, *, skip=()) -> None:
    """Add one option per field of the settings dataclass ``cls`` to ``parser``, in field order: its name, type,
    default, help, range and choices from the field (see ``setting``). Fields with ``cli=False`` metadata, and those
    named in ``skip``, get none.

    Raises:
        TypeError: a field whose type no option can take, or without a default.
    """
    kinds = _kinds(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        meta, kind, default = f.metadata, kinds[f.name], _default(f)
        opt = option_name(cls, f.name)
        help_ = meta.get("help")
        if help_ is not None and "(default" not in help_ and default is not None and kind.base is not bool:
            help_ = f"{help_} (default {_show(default)})"
        kw = dict(default=default, help=help_, dest=_dest(f))
        if kind.base is bool:
            parser.add_argument(opt, action=argparse.BooleanOptionalAction, **kw)
            continue
        type_ = _argparse_type(f, kind)
        if type_ is not None:
            kw["type"] = type_
        if "choices" in meta and kind.base is not tuple:
            kw["choices"] = meta["choices"]
        if "metavar" in meta:
            kw["metavar"] = meta["metavar"]
        parser.add_argument(opt, **kw)


def from_args(cls, args, **values):
    """The settings ``cls`` that the parsed command line ``args`` describes (``add_settings``'s options; lists back
    to tuples), with ``values`` given by the caller in place of the parsed ones; ``cls``'s own validation runs."""
    kinds = _kinds(cls)
    for f in dataclasses.fields(cls):
        if f.name in values or not f.metadata.get("cli", True) or not hasattr(args, _dest(f)):
            continue
        value = getattr(args, _dest(f))
        values[f.name] = tuple(value) if kinds[f.name].base is tuple and value is not None else value
    return cls(**values)


def options_dict(settings) -> dict:
    """The settings under the command line's names (``eta``, ``batch_size``: the options' ``dest``), tuples as
    lists: what a result's JSON reports (``from_args`` builds the same settings back)."""
    return {_dest(f): list(v) if isinstance(v := getattr(settings, f.name), tuple) else v
            for f in dataclasses.fields(settings)}


def required_fields(cls) -> tuple[str, ...]:
    """The fields a dict read back must name (``required`` metadata)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("required"))


_WHAT = {float: "a finite number", int: "an integer", bool: "true or false", str: "a string"}


def check_field_types(settings) -> None:
    """Raise ``ValueError`` naming the first field of ``settings`` that is not of its declared type (finite where a
    number; a float field takes an int; a tuple of floats, any tuple of finite numbers), in the words of JSON: a
    configuration read back from an edited file may hold anything.

    >>> @dataclasses.dataclass
    ... class C:
    ...     eta: float = 0.1
    ...     sizes: int | None = None
    >>> check_field_types(C(eta="0.1"))
    Traceback (most recent call last):
    ValueError: eta must be a finite number, got '0.1'
    """
    for name, kind in _kinds(type(settings)).items():
        value = getattr(settings, name)
        if value is None and kind.optional:
            continue
        ok = _is(value, kind.base)
        what = _WHAT.get(kind.base)
        if kind.base is tuple:
            item = kind.item or float
            ok = isinstance(value, tuple) and all(_is(v, item) for v in value)
            what = "a list of finite numbers" if item in (int, float) else f"a list of {_WHAT[item]}s"
        if not ok:
            raise ValueError(f"{name} must be {what}{' or null' if kind.optional else ''}, got {value!r}")


def _is(value, base) -> bool:
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)
