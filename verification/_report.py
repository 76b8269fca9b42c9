"""What every check returns and how it is printed, saved and summarised.

A check tests one or more *claims*. Each claim has a verdict (does it hold here?) and an expectation: most claims
are expected to hold, but a check also includes cases where the claim must fail (a large learning rate, a naive
estimator, a run that has not reached stationarity), so that a check that cannot report a failure is caught. A
claim is ``ok`` when its verdict matches its expectation, and a check passes when every claim is ok.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from verification._cli import BadInput, Parser, write_json_atomic

__all__ = ["Claim", "CheckResult", "add_common_options", "run_main", "figure_path"]


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
    """

    name: str
    statement: str
    holds: bool
    summary: str
    expected: bool = True
    numbers: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.holds) == bool(self.expected)

    def line(self) -> str:
        verdict = "holds" if self.holds else "fails"
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
        return all(c.ok for c in self.claims)

    def to_dict(self) -> dict:
        return {
            "check": self.check, "title": self.title, "ok": self.ok, "seconds": self.seconds,
            "claims": [dict(asdict(c), ok=c.ok) for c in self.claims],
            "rows": [_jsonable(r) for r in self.rows], "figures": list(self.figures),
            "settings": _jsonable(self.settings),
            "environment": {"python": sys.version.split()[0], "platform": platform.platform()},
        }

    def print_summary(self, out=None) -> None:
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


def _jsonable(obj):
    """Plain JSON types: numpy scalars to Python numbers, non-finite floats to strings."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        return x if math.isfinite(x) else str(x)
    return obj


def add_common_options(p: Parser, *, seed: int = 0, confidence: float = 0.99) -> None:
    """``--seed``, ``--confidence``, ``--json PATH`` and ``--out DIR``, shared by every check."""
    p.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed})")
    p.add_argument("--confidence", type=float, default=confidence,
                   help=f"family-wise confidence of the statistical verdicts (default {confidence})")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result (claims and rows) as JSON")
    p.add_argument("--out", default=None, metavar="DIR", help="write the figures (PNG) into DIR")


def check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"--confidence must lie in (0, 1), got {confidence}")
    return confidence


def figure_path(args, name: str) -> Path | None:
    """``DIR/name.png`` when ``--out DIR`` was given, else ``None`` (no figure)."""
    if getattr(args, "out", None) is None:
        return None
    return Path(args.out) / f"{name}.png"


def run_main(parser: Parser, run, argv=None, out=None) -> int:
    """Parse, run, print, write the JSON; exit 0 when every claim is as expected, 1 otherwise, 2 on bad input."""
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        check_confidence(args.confidence)
        result = run(args, out=out)
    except (ValueError, BadInput) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    result.seconds = time.perf_counter() - t0
    result.print_summary(out)
    if args.json:
        write_json_atomic(args.json, result.to_dict())
    return 0 if result.ok else 1
