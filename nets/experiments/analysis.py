"""What an experiment's analysis works with: the output folder, its runs' histories, figures and curve distances."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sgd_noise_common.files import save_figure_atomic

__all__ = ["Context", "save_figure", "curve", "rms_distance"]

def markdown_row(cells) -> str:
    """One row of a Markdown table, each cell's ``|`` escaped and its line breaks made spaces, so that a cell
    such as ``|grad L|`` stays one cell.

    >>> print(markdown_row(["|grad L| at min", 0.5]))
    | \\|grad L\\| at min | 0.5 |
    """
    def cell(c) -> str:
        return " ".join(str(c).split()).replace("|", "\\|")

    return "| " + " | ".join(cell(c) for c in cells) + " |"


@dataclass
class Context:
    """What ``analyse`` gets besides the results: where to write, the scale, the arguments, the specs."""

    name: str
    out: Path
    scale: str
    args: object
    specs: list
    figures: list = field(default_factory=list)
    #: Markdown blocks (tables) the analysis adds to the report, after the claims.
    tables: list = field(default_factory=list)

    def table(self, title: str, header: list[str], rows: list[list]) -> None:
        """Add a Markdown table to the report (every cell escaped: ``markdown_row``)."""
        lines = [f"**{title}**", "", markdown_row(header), "|" + "---|" * len(header)]
        lines += [markdown_row(row) for row in rows]
        self.tables.append("\n".join(lines) + "\n")

    def paragraph(self, title: str, text: str) -> None:
        """Add a paragraph of prose (e.g. a verdict) to the report, after the claims."""
        self.tables.append(f"**{title}** {text}\n")

    def figure(self, fig, stem: str) -> str:
        """Save ``fig`` as ``<out>/<stem>.png`` (atomically), remember it for the report, return its path."""
        path = self.out / f"{stem}.png"
        save_figure(fig, path)
        self.figures.append(str(path))
        return str(path)

    def history(self, key: str) -> list[dict]:
        """The per-epoch rows of run ``key``."""
        path = self.out / "runs" / key / "history.csv"
        if not path.is_file():
            return []
        with open(path) as fh:
            return [{k: _number_or_text(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _number_or_text(v):
    """A CSV cell as a float where it reads as one, else as it is (a tag, a schedule name)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def save_figure(fig, path) -> None:
    """Save ``fig`` to ``path`` atomically at the experiments' resolution, and close it."""
    save_figure_atomic(fig, path, dpi=120)


def curve(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of one history column."""
    return np.array([r["epoch"] for r in rows]), np.array([r[key] for r in rows], dtype=np.float64)


def rms_distance(a_rows, b_rows, key: str) -> float:
    """RMS difference of two runs' ``key`` curves, compared at the epochs of the first (linear interpolation);
    infinite when either run diverged (``None``)."""
    if a_rows is None or b_rows is None:  # a diverged run: as far from any curve as can be
        return math.inf
    ea, va = curve(a_rows, key)
    eb, vb = curve(b_rows, key)
    if ea.size == 0 or eb.size == 0:
        return math.nan
    return float(np.sqrt(np.mean((va - np.interp(ea, eb, vb)) ** 2)))
