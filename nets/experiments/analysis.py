"""What an experiment's analysis works with: the output folder, its runs' histories, figures and curve distances."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sgd_noise_common.files import save_figure_atomic, write_text_atomic

__all__ = ["Context", "save_figure", "curve", "rms_distance", "markdown_row", "REPORT_ROWS"]

#: The longest table a report shows in Markdown; a longer one goes to a CSV file that the report links.
REPORT_ROWS = 20

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
    #: The CSV files of the tables too long for the report (``table``), in the order written.
    csv_files: list = field(default_factory=list)
    #: A dry context (the bootstrap's re-analyses, ``cli``) writes nothing: tables, paragraphs and figures are
    #: dropped.
    dry: bool = False

    def table(self, title: str, header: list[str], rows: list[list], *, name: str | None = None) -> None:
        """Add a table to the report: in Markdown (every cell escaped: ``markdown_row``) when it has at most
        ``REPORT_ROWS`` rows; otherwise as ``<out>/table-<name>.csv`` (written atomically), which the report
        links, so that a per-run or per-direction table does not bury the report. ``name`` defaults to the first
        words of the title."""
        if self.dry:
            return
        if len(rows) <= REPORT_ROWS:
            lines = [f"**{title}**", "", markdown_row(header), "|" + "---|" * len(header)]
            lines += [markdown_row(row) for row in rows]
            self.tables.append("\n".join(lines) + "\n")
            return
        slug = "-".join(re.findall(r"[a-z0-9]+", (name or title).lower())[:4])
        path = self.out / f"table-{slug}.csv"
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        write_text_atomic(path, buf.getvalue())
        self.csv_files.append(str(path))
        self.tables.append(f"**{title}**: {len(rows)} rows, in [`{path.name}`]({path.name}).\n")

    def paragraph(self, title: str, text: str) -> None:
        """Add a paragraph of prose (e.g. a verdict) to the report, after the claims."""
        if not self.dry:
            self.tables.append(f"**{title}** {text}\n")

    def figure(self, fig, stem: str) -> str:
        """Save ``fig`` as ``<out>/<stem>.png`` (atomically), remember it for the report, return its path."""
        path = self.out / f"{stem}.png"
        if self.dry:
            import matplotlib.pyplot as plt

            plt.close(fig)
            return str(path)
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
