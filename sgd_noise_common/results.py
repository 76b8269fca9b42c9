"""Typed results: frozen dataclasses whose ``to_dict()`` is the data of a JSON file.

A library function that hands numbers to the experiments returns a frozen dataclass: callers read attributes, so a
renamed field fails loudly instead of silently disappearing from a ``dict``. A missing or undefined number is
``math.nan``, a float like any other, in memory and in ``to_dict()``; the JSON writer
(``sgd_noise_common.files.write_json_atomic``, through ``jsonable``) turns it into ``null``. Fields that are not
JSON material (eigenvectors, per-probe samples) are marked ``field(metadata=NOT_JSON)`` and left out of
``to_dict()``.

>>> import math
>>> import numpy as np
>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True)
... class Example(Result):
...     value: float
...     values: np.ndarray
...     missing: float = math.nan
...     big: np.ndarray = field(default=None, metadata=NOT_JSON)
>>> Example(1.5, np.array([1.0, 2.0])).to_dict()
{'value': 1.5, 'values': [1.0, 2.0], 'missing': nan}
"""

from __future__ import annotations

import dataclasses

__all__ = ["Result", "NOT_JSON", "plain_data"]

#: Field metadata that keeps a field out of ``Result.to_dict()``.
NOT_JSON = {"json": False}


def plain_data(obj):
    """``obj`` with Python types only: a ``Result`` by its ``to_dict()``, mappings, lists and tuples element by
    element, numpy arrays as lists and numpy scalars as Python numbers; floats as they are (NaN stays NaN)."""
    import numpy as np

    if isinstance(obj, Result):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


class Result:
    """The base of a typed result (subclass it with ``@dataclass(frozen=True)``): ``to_dict()`` gives every field
    not marked ``NOT_JSON`` as plain data (``plain_data``), the content of its JSON file."""

    __slots__ = ()

    def to_dict(self) -> dict:
        """Every field not marked ``NOT_JSON``, with Python types only (NaN stays a float; JSON writes it as null)."""
        return {f.name: plain_data(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.metadata.get("json", True)}

    @classmethod
    def from_dict(cls, data: dict):
        """The result from ``to_dict()``'s data read back from JSON, each field by its annotation: ``float`` from a
        number or ``null`` (NaN) or ``"inf"``, ``int``, ``bool``, ``str``, a nested ``Result`` by its own
        ``from_dict``, a ``tuple`` from a list, an ``np.ndarray`` from a list; anything else (``dict``, ``list``)
        as it is. A field marked ``NOT_JSON``, or missing from ``data``, takes its default (an error when it has
        none)."""
        import typing

        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in data or not f.metadata.get("json", True):
                continue
            kwargs[f.name] = _from_json(hints[f.name], data[f.name])
        return cls(**kwargs)


def _from_json(hint, value):
    """``value`` (JSON data) as the type ``hint`` names (``Result.from_dict``)."""
    import math
    import types
    import typing

    import numpy as np

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        return math.nan if value is None else float(value)
    if hint is int or hint is bool or hint is str:
        return hint(value)
    if isinstance(hint, type) and issubclass(hint, Result):
        return hint.from_dict(value)
    if hint is np.ndarray:
        return np.array([_number(v) for v in value], dtype=np.float64)
    if hint is tuple or origin is tuple:
        return tuple(_number(v) for v in value)
    return value


def _number(v):
    """A list item as ``jsonable`` writes numbers: null is NaN, ``"inf"``/``"-inf"`` infinite; anything else as
    it is (a tuple may hold strings)."""
    import math

    if v is None:
        return math.nan
    if isinstance(v, str) and v in ("inf", "-inf"):
        return float(v)
    return v
