"""Shared command-line plumbing for the checks: one-line errors with exit code 2, atomic writes, list parsing."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["BadInput", "Parser", "float_list", "int_list", "write_json_atomic", "save_figure_atomic",
           "bonferroni_z"]


class BadInput(Exception):
    """Raised for bad command-line input; the check prints one line and exits with 2."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def float_list(text: str) -> list[float]:
    """``"0.1,0.2"`` → ``[0.1, 0.2]``."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def int_list(text: str) -> list[int]:
    """``"5,10"`` → ``[5, 10]``."""
    values = float_list(text)
    if any(not v.is_integer() for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
    return [int(v) for v in values]


def _atomic(path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file readable by its owner only; give it the permissions of a normal new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename, so a reader never sees half a file."""

    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")

    _atomic(path, write)


def save_figure_atomic(fig, path, **kwargs) -> None:
    """``fig.savefig`` to ``path`` atomically (PNG unless the suffix says otherwise), then close the figure."""
    import matplotlib.pyplot as plt

    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        _atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, **kwargs))
    finally:
        plt.close(fig)


def bonferroni_z(confidence: float, tests: int) -> float:
    """Two-sided critical |z| so that ``tests`` z-tests all pass with probability >= ``confidence`` under the null.

    >>> round(bonferroni_z(0.95, 1), 3)
    1.96
    """
    from scipy.stats import norm

    alpha = (1.0 - confidence) / max(tests, 1)
    return float(norm.isf(alpha / 2.0))
