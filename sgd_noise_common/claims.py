"""What a check of the theory, or a network experiment, says: claims with verdicts.

A check tests one or more *claims*. Each claim has a verdict (does it hold here?) and an expectation: most claims
are expected to hold, but a check also includes cases where the claim must fail (a large learning rate, a naive
estimator, a run that has not reached stationarity), so that a check that cannot report a failure is caught. A
claim is ``ok`` when its verdict matches its expectation, and a check passes when every claim is ok.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sgd_noise_common.environment import environment
from sgd_noise_common.files import jsonable

__all__ = ["Claim", "CheckResult"]


@dataclass
class Claim:
    """One tested statement.

    Attributes:
        name: a short identifier, e.g. ``"equal-ratio"``.
        statement: the claim in words (what the paper or the theory says).
        holds: the verdict on this run.
        summary: one line with the key numbers behind the verdict.
        expected: whether the check expects the claim to hold in this case (``False`` for the must-fail cases).
        numbers: the key numbers, for the JSON and the report.
        settled: whether the data decide the verdict: ``False`` when the interval of the estimate behind it (its
            standard error, e.g. the scatter between seeds) straddles the claim's threshold, or when there is no
            standard error (one seed). Such a claim is reported as "not settled", neither yes nor no
            (``sgd_noise_common.stats.compare``).
    """

    name: str
    statement: str
    holds: bool
    summary: str
    expected: bool = True
    numbers: dict = field(default_factory=dict)
    settled: bool = True

    @property
    def verdict(self) -> str:
        """``"yes"``, ``"no"`` or ``"not settled"``."""
        return "not settled" if not self.settled else ("yes" if self.holds else "no")

    @property
    def ok(self) -> bool:
        """Whether the verdict is the expected one."""
        return bool(self.holds) == bool(self.expected)

    def line(self) -> str:
        """One printed line: ``[ok] name: holds - summary``."""
        verdict = ("holds" if self.holds else "fails") + ("" if self.settled else " (not settled)")
        expect = "" if self.expected else " (expected to fail here)"
        return f"[{'ok' if self.ok else 'FAIL'}] {self.name}: {verdict}{expect} - {self.summary}"


@dataclass
class CheckResult:
    """The outcome of one check: its claims, the detailed rows, the figures written and the settings used."""

    check: str
    title: str
    claims: list[Claim]
    rows: list[dict] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every claim's verdict is the expected one."""
        return all(c.ok for c in self.claims)

    def to_dict(self) -> dict:
        """The result as JSON-ready data, with the environment it was computed in."""
        return {
            "check": self.check, "title": self.title, "ok": self.ok, "seconds": self.seconds,
            "claims": [dict(asdict(c), ok=c.ok) for c in self.claims],
            "rows": [jsonable(r) for r in self.rows], "figures": list(self.figures),
            "settings": jsonable(self.settings), "environment": environment(),
        }

    def print_summary(self, out=None) -> None:
        """Print each claim's line, the figures and the verdict to ``out`` (default stdout)."""
        out = sys.stdout if out is None else out
        out.write(f"\n{self.check}: {self.title}\n")
        for c in self.claims:
            out.write(f"  {c.line()}\n")
        for f in self.figures:
            out.write(f"  figure: {f}\n")
        n_ok = sum(c.ok for c in self.claims)
        out.write(f"{self.check}: {'PASS' if self.ok else 'FAIL'} ({n_ok}/{len(self.claims)} claims as expected, "
                  f"{self.seconds:.1f} s)\n")

    def markdown(self, figure_prefix: str = "") -> str:
        """The result as a Markdown section: a table of the claims and the figures inline."""
        lines = [f"## `{self.check}`: {self.title}", "",
                 f"**{'PASS' if self.ok else 'FAIL'}** in {self.seconds:.1f} s.", "",
                 "| claim | statement | expected | verdict | key numbers |", "|---|---|---|---|---|"]
        for c in self.claims:
            lines.append(f"| {'✅' if c.ok else '❌'} `{c.name}` | {c.statement} | "
                         f"{'holds' if c.expected else 'fails'} | {'holds' if c.holds else 'fails'} | "
                         f"{c.summary} |")
        lines.append("")
        for f in self.figures:
            lines.append(f"![{Path(f).stem}]({figure_prefix}{Path(f).name})")
            lines.append("")
        return "\n".join(lines)
