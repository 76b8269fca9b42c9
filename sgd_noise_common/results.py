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
