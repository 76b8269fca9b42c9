"""What a check will cost, said before it starts: memory and time from its sizes, each term named by the options
that set it.

Every check has an ``estimate(settings) -> Cost``: its largest arrays (bytes) and its work (seconds, from the
sizes times a per-unit cost measured on the 2-core development VM and rounded up). ``enforce`` refuses, with one
line naming the options, a run whose memory exceeds ``MEMORY_FRACTION`` of the machine's RAM or whose time
exceeds ``--max-minutes`` (default ``DEFAULT_MAX_MINUTES``), and prints the estimate on stderr for a long run.

>>> c = Cost()
>>> c.memory("--chains=10", 8e3); c.time("--steps=5", 2.0)
>>> c.total_bytes, c.total_seconds
(8000.0, 2.0)
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

from sgd_noise_common.environment import machine_memory

__all__ = ["Cost", "enforce", "machine_memory", "progress", "add_budget_option", "format_bytes", "format_seconds",
           "MEMORY_FRACTION", "DEFAULT_MAX_MINUTES", "LONG_RUN_SECONDS", "NS"]

#: The share of the machine's RAM a check may plan to use (the rest is the system's and other programs').
MEMORY_FRACTION = 0.8
#: The default of ``--max-minutes``.
DEFAULT_MAX_MINUTES = 60.0
#: Runs estimated to take longer than this print their estimate on stderr (and show progress on a terminal).
LONG_RUN_SECONDS = 30.0
#: One nanosecond, the unit of the per-element costs.
NS = 1e-9


@dataclass
class Cost:
    """Memory and time terms, each labelled with the options that set it (e.g. ``--chains=512``)."""

    memory_terms: list = field(default_factory=list)
    time_terms: list = field(default_factory=list)

    def memory(self, label: str, nbytes: float) -> None:
        """Add ``nbytes`` held at once by what ``label`` names (terms with the same label add up)."""
        self.memory_terms.append((label, float(nbytes)))

    def time(self, label: str, seconds: float) -> None:
        """Add ``seconds`` of work set by what ``label`` names."""
        self.time_terms.append((label, float(seconds)))

    @property
    def total_bytes(self) -> float:
        """All memory terms."""
        return math.fsum(b for _, b in self.memory_terms)

    @property
    def total_seconds(self) -> float:
        """All time terms."""
        return math.fsum(s for _, s in self.time_terms)

    @staticmethod
    def _largest(terms) -> str:
        by = {}
        for label, x in terms:
            by[label] = by.get(label, 0.0) + x
        return max(by, key=by.get) if by else "the settings"


def spectrum_of(text: str):
    """``quadratic.spectra.spectrum_info(text)`` (its dimension and the bytes its construction takes, without
    building it), its errors named ``--spectrum``: what every estimate starts from."""
    from quadratic.spectra import spectrum_info

    try:
        return spectrum_info(text)
    except ValueError as exc:
        raise ValueError(f"--spectrum: {exc}") from None


def format_bytes(n: float) -> str:
    """``n`` bytes in words.

    >>> format_bytes(3 * 2**30), format_bytes(2.5 * 2**40), format_bytes(2048)
    ('3 GiB', '2.5 TiB', '2 KiB')
    """
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size or unit == "KiB":
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"  # pragma: no cover


def format_seconds(s: float) -> str:
    """``s`` seconds in words.

    >>> format_seconds(42), format_seconds(5400), format_seconds(3e6)
    ('42 s', '90 min', '34.7 days')
    """
    if not math.isfinite(s):
        return "forever"
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    if s < 3 * 86400:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:.3g} days"


def add_budget_option(p, *, default: float = DEFAULT_MAX_MINUTES) -> None:
    """Add ``--max-minutes`` (the longest estimated run a check starts) to the parser ``p``."""
    from sgd_noise_common.cli import finite_float

    p.add_argument("--max-minutes", type=finite_float(0.0, low_open=True), default=default, metavar="MIN",
                   help=f"refuse a run estimated to take longer than MIN minutes (default {default:g})")


def enforce(cost: Cost, *, max_minutes: float = DEFAULT_MAX_MINUTES, prog: str = "", err=None,
            memory: int | None = -1) -> None:
    """Refuse, before any work, a run that cannot fit; print the estimate of a long one on ``err`` (stderr).

    Args:
        cost: the check's estimate.
        max_minutes: the longest run allowed (``--max-minutes``).
        prog: the command, to start the printed estimate with.
        err: where the estimate of a long run goes (default stderr).
        memory: the machine's RAM in bytes (default: ``machine_memory()``; ``None``: unknown, not checked).

    Raises:
        ValueError: one line naming the options behind the largest term, what the run would need, and what is
            available or allowed.
    """
    err = sys.stderr if err is None else err
    total = machine_memory() if memory == -1 else memory
    need = cost.total_bytes
    if total is not None and need > MEMORY_FRACTION * total:
        label = Cost._largest(cost.memory_terms)
        raise ValueError(f"{label} needs about {format_bytes(need)} of memory, more than this machine can give "
                         f"({MEMORY_FRACTION:.0%} of its {format_bytes(total)}); make it smaller")
    secs = cost.total_seconds
    if not secs <= 60.0 * max_minutes:
        label = Cost._largest(cost.time_terms)
        raise ValueError(f"{label} would take about {format_seconds(secs)} (estimated before starting), more than "
                         f"--max-minutes {max_minutes:g}; make it smaller, or raise --max-minutes")
    if secs > LONG_RUN_SECONDS:
        err.write(f"{prog + ': ' if prog else ''}estimated {format_seconds(secs)} and {format_bytes(need)} of "
                  f"memory (limit --max-minutes {max_minutes:g})\n")
        err.flush()


def progress(iterable, *, total: int | None = None, desc: str = ""):
    """``iterable`` with a progress bar on stderr when stderr is a terminal and the loop lasts (tqdm, shown after
    2 s); the plain iterable otherwise."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=None, delay=2.0, leave=False)
