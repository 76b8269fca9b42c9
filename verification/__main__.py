"""``python -m verification``: run every check and write one report folder.

The folder (``--out``, default ``verification-report``) gets ``report.md`` (each claim, its verdict and the key
numbers, with the figures inline), ``figures/*.png``, one ``<check>.json`` per check and ``summary.json``. The
report is rewritten after every check, so an interrupted run leaves the finished checks reported. Exit status 0
when every check passes, 1 when any fails (or raises), 2 on bad input.

Example::

    python -m verification --out report --only invariance,breakdown
"""

from __future__ import annotations

import importlib
import io
import sys
import time
from pathlib import Path

from common.claims import CheckResult, Claim
from common.cli import Parser
from common.files import atomic_write, check_output_dir, claim_output_dir, write_json_atomic

#: What the report folder holds besides figures/ (the names that must not be someone else's).
REPORT_FILES = ("report.md", "summary.json", "derive.md", "derive.tex", "*.json")

#: The checks, in the order of the paper's argument.
CHECKS = ("derive", "ou_check", "invariance", "breakdown", "fdr", "noise_scale")


def build_parser() -> Parser:
    """The command line of ``python -m verification``: ``--out``, ``--only``, ``--seed``, ``--quiet``."""
    p = Parser(prog="python -m verification", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="verification-report", metavar="DIR",
                   help="report folder (default verification-report)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(CHECKS)}")
    p.add_argument("--seed", type=int, default=0, help="random seed passed to every check (default 0)")
    p.add_argument("--quiet", action="store_true", help="print only the verdicts, not each check's table")
    return p


def _run_one(name: str, out_dir: Path, seed: int, stream) -> CheckResult:
    module = importlib.import_module(f"verification.{name}")
    argv = ["--seed", str(seed), "--out", str(out_dir / "figures")]
    if name == "derive":  # its "figures" are the derivation as text and LaTeX: beside report.md
        argv = ["--seed", str(seed), "--out", str(out_dir), "--quiet"]
    args = module.build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        result = module.run(args, out=stream)
    except Exception as exc:  # noqa: BLE001 - a crashing check is reported as failed, the others still run
        result = CheckResult(name, "did not complete", [Claim("completed", "the check runs to the end",
                                                              holds=False, summary=f"{type(exc).__name__}: {exc}")])
    result.seconds = time.perf_counter() - t0
    return result


def _write_report(out_dir: Path, results: list[CheckResult], pending: list[str]) -> None:
    ok = all(r.ok for r in results)
    lines = ["# sgd-noise verification report", "",
             f"{'All checks pass' if ok and not pending else 'Some checks FAIL' if not ok else 'Running'}: "
             f"{sum(r.ok for r in results)}/{len(results)} checks pass"
             + (f", {len(pending)} still to run ({', '.join(pending)})" if pending else "") + ".", "",
             "Each claim is tested where it must hold and, where the check includes one, where it must fail; "
             "a claim is ✅ when its verdict is the expected one.", "",
             "| check | verdict | claims as expected | seconds |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| `{r.check}` | {'PASS' if r.ok else 'FAIL'} | {sum(c.ok for c in r.claims)}/{len(r.claims)} "
                     f"| {r.seconds:.1f} |")
    lines.append("")
    if any(r.check == "derive" for r in results):
        lines += ["The symbolic derivation itself: [derive.md](derive.md) (text), [derive.tex](derive.tex).", ""]
    for r in results:
        lines.append(r.markdown(figure_prefix="figures/"))
    atomic_write(out_dir / "report.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    write_json_atomic(out_dir / "summary.json", {
        "ok": ok and not pending, "pending": pending,
        "checks": [{"check": r.check, "ok": r.ok, "seconds": r.seconds,
                    "claims": [{"name": c.name, "ok": c.ok, "holds": c.holds, "expected": c.expected,
                                "summary": c.summary} for c in r.claims]} for r in results]})


def main(argv=None) -> int:
    """Run the chosen checks, writing the report after each; returns 0 when all pass, 1 otherwise, 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    names = list(CHECKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in names if n not in CHECKS]
        if bad or not names:
            print(f"{parser.prog}: error: --only: unknown check(s) {bad or '(none given)'}; choose from "
                  f"{', '.join(CHECKS)}", file=sys.stderr)
            return 2
    try:
        if args.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {args.seed}")
        check_output_dir(args.out, option="--out", names=REPORT_FILES)
        check_output_dir(Path(args.out) / "figures", option="--out", names=[f"{n}*" for n in CHECKS])
        out_dir = claim_output_dir(args.out, option="--out", names=REPORT_FILES)
        claim_output_dir(out_dir / "figures", option="--out", names=[f"{n}*" for n in CHECKS])
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    results: list[CheckResult] = []
    for i, name in enumerate(names):
        print(f"[{i + 1}/{len(names)}] {name} ...", flush=True)
        stream = io.StringIO() if args.quiet else sys.stdout
        result = _run_one(name, out_dir, args.seed, stream)
        result.print_summary(sys.stdout)
        write_json_atomic(out_dir / f"{name}.json", result.to_dict())
        results.append(result)
        _write_report(out_dir, results, names[i + 1:])
    ok = all(r.ok for r in results)
    print(f"\nverification: {'PASS' if ok else 'FAIL'} ({sum(r.ok for r in results)}/{len(results)} checks); "
          f"report in {out_dir / 'report.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
