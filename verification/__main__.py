"""``python -m verification``: run every check and write one report folder.

The folder (``--out``, default ``verification-report``) gets ``report.md`` (each claim, its verdict and the key
numbers, with the figures inline), ``figures/*.png``, one ``<check>.json`` per check and ``summary.json``. The
report is rewritten after every check, so an interrupted run leaves the finished checks reported. A check of an
earlier run whose ``<check>.json`` is still in the folder (``--only`` ran a subset) stays in the report, marked with
when it ran and as not re-run now, so that the report always lists every result in the folder. Exit status 0
when every check run now passes, 1 when any fails (or raises), 2 on bad input or when a file cannot be written.

Example::

    python -m verification --out report --only invariance,breakdown
"""

from __future__ import annotations

import datetime
import importlib
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sgd_noise_common.claims import CheckResult, Claim
from sgd_noise_common.cli import Parser, add_settings, setting
from sgd_noise_common.files import atomic_write, check_output_dir, claim_output_dir, write_json_atomic
from sgd_noise_common.lock import folder_lock
from verification import budget
from verification.cli import FIGURES_KIND, OutputError, parse_or_exit_code, result_kind, writing

#: What the report folder holds besides figures/ (the names that must not be someone else's).
REPORT_FILES = ("report.md", "summary.json", "derive.md", "derive.tex", "*.json")
#: The report folder's kind and its own files (``sgd_noise_common.files``): a check's ``--json`` may rewrite its own
#: ``<check>.json`` there; nothing may write the report, the summary or the derivation through a file option.
REPORT_KIND, SUMMARY_KIND = "report", "verification.summary"

#: The checks, in the order of the paper's argument.
CHECKS = ("derive", "ou_check", "invariance", "breakdown", "fdr", "noise_scale")
REPORT_OWNERS = {"report.md": None, "summary.json": None, "derive.md": None, "derive.tex": None,
                 "figures": FIGURES_KIND,
                 **{f"{name}.json": result_kind(name) for name in CHECKS}}


@dataclass(frozen=True, kw_only=True)
class RunAllSettings:
    """What ``python -m verification`` runs and where it writes its report: the source of its command line.

    Attributes:
        out: the report folder (``--out``).
        only: the checks to run, a subset of ``CHECKS`` (``--only``); ``None``: all of them.
        seed: the seed passed to every check (``--seed``).
        quiet: print only the verdicts, not each check's table (``--quiet``).
        wait: wait for another process writing the same folder instead of refusing (``--wait``).
    """

    out: str = setting("verification-report", help="report folder", metavar="DIR")
    only: tuple[str, ...] | None = setting(None, choices=CHECKS, help=f"comma-separated subset of {','.join(CHECKS)}")
    seed: int = setting(0, help="random seed passed to every check", range=">= 0")
    quiet: bool = setting(False, help="print only the verdicts, not each check's table")
    wait: bool = setting(False, help="when another process is writing the same --out, wait for it instead of "
                                     "refusing")


def build_parser() -> Parser:
    """The command line of ``python -m verification``: an option per field of ``RunAllSettings`` and
    ``--max-minutes``."""
    p = Parser(prog="python -m verification", description=__doc__.split("\n\n")[0])
    add_settings(p, RunAllSettings)
    budget.add_budget_option(p)
    return p


def _check_args(name: str, out_dir: Path, args):
    """The parsed command line of check ``name`` as this run gives it."""
    module = importlib.import_module(f"verification.{name}")
    argv = ["--seed", str(args.seed), "--out", str(out_dir / "figures"), "--max-minutes", str(args.max_minutes)]
    if name == "derive":  # its "figures" are the derivation as text and LaTeX: beside report.md
        argv = ["--seed", str(args.seed), "--out", str(out_dir), "--quiet", "--max-minutes", str(args.max_minutes)]
    return module, module.build_parser().parse_args(argv)


def _estimate(names, out_dir: Path, args) -> budget.Cost:
    """The memory (the largest check's) and time (all of them) of running ``names``."""
    total = budget.Cost()
    for name in names:
        module, check_args = _check_args(name, out_dir, args)
        cost = module.estimate(module.settings_from_args(check_args))
        total.time_terms += [(f"{name}: {label}", x) for label, x in cost.time_terms]
        if cost.total_bytes > total.total_bytes:  # the checks run one after the other
            total.memory_terms = [(f"{name}: {label}", x) for label, x in cost.memory_terms]
    return total


def _run_one(name: str, out_dir: Path, args, stream) -> CheckResult:
    module, check_args = _check_args(name, out_dir, args)
    t0 = time.perf_counter()
    try:
        result = module.run(check_args, out=stream)
    except OutputError:  # a file that cannot be written is bad output (exit 2), not a failed check
        raise
    except OSError as exc:
        raise OutputError(f"--out {out_dir}: could not write the files of {name} ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - a crashing check is reported as failed, the others still run
        result = CheckResult(name, "did not complete", [Claim("completed", "the check runs to the end",
                                                              holds=False, summary=f"{type(exc).__name__}: {exc}")])
    result.seconds = time.perf_counter() - t0
    return result


def _now() -> str:
    """The time now, UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _result_from_json(data: dict) -> CheckResult:
    """A ``CheckResult`` (claims, figures, seconds) back from its ``<check>.json``."""
    claims = [Claim(c["name"], c["statement"], bool(c["holds"]), str(c["summary"]), bool(c.get("expected", True)),
                    dict(c.get("numbers") or {})) for c in data["claims"]]
    return CheckResult(str(data["check"]), str(data.get("title", "")), claims, figures=list(data.get("figures", [])),
                       seconds=float(data.get("seconds", 0.0)))


def _earlier_results(out_dir: Path, names) -> tuple[dict, list[str]]:
    """The results of checks not run now whose ``<check>.json`` an earlier run left in ``out_dir``: ``{name:
    (result, ran_at)}``, and the names whose file is unreadable."""
    found, unreadable = {}, []
    for name in CHECKS:
        path = out_dir / f"{name}.json"
        if name in names or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            result = _result_from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            unreadable.append(name)
            continue
        ran_at = data.get("ran_at") or datetime.datetime.fromtimestamp(
            path.stat().st_mtime, datetime.timezone.utc).replace(microsecond=0).isoformat() + " (file time)"
        found[name] = (result, str(ran_at))
    return found, unreadable


def _write_report(out_dir: Path, results: list[CheckResult], pending: list[str], earlier: dict | None = None,
                  unreadable=(), ran_at: dict | None = None) -> None:
    """Write ``report.md`` and ``summary.json``: the checks run now (``results``, their times in ``ran_at``), those
    still to run (``pending``) and those of earlier runs still in the folder (``earlier``), in the order of
    ``CHECKS``, each marked with when it ran and whether it was re-run now."""
    earlier, ran_at = earlier or {}, ran_at or {}
    ok = all(r.ok for r in results)
    listed = {r.check: (r, ran_at.get(r.check, ""), True) for r in results}
    listed.update({name: (r, when, False) for name, (r, when) in earlier.items()})
    order = [listed[name] for name in CHECKS if name in listed]
    lines = ["# sgd-noise verification report", "",
             f"{'All checks pass' if ok and not pending else 'Some checks FAIL' if not ok else 'Running'}: "
             f"{sum(r.ok for r in results)}/{len(results)} checks run now pass"
             + (f", {len(pending)} still to run ({', '.join(pending)})" if pending else "") + "."]
    if earlier:
        lines += ["", "Also in this folder, from earlier runs and **not re-run now**: "
                  + ", ".join(f"`{n}` ({'PASS' if r.ok else 'FAIL'}, ran {w})" for n, (r, w) in earlier.items())
                  + ". Their sections below are those runs' results."]
    if unreadable:
        lines += ["", "Unreadable results of earlier runs in this folder (not listed): "
                  + ", ".join(f"`{n}.json`" for n in unreadable) + "."]
    lines += ["", "Each claim is tested where it must hold and, where the check includes one, where it must fail; "
              "a claim is ✅ when its verdict is the expected one.", "",
              "| check | verdict | claims as expected | seconds | ran at (UTC) | this run |",
              "|---|---|---|---|---|---|"]
    for r, when, now in order:
        lines.append(f"| `{r.check}` | {'PASS' if r.ok else 'FAIL'} | {sum(c.ok for c in r.claims)}/{len(r.claims)} "
                     f"| {r.seconds:.1f} | {when} | {'re-run now' if now else 'earlier run, not re-run'} |")
    lines.append("")
    if "derive" in listed:
        lines += ["The symbolic derivation itself: [derive.md](derive.md) (text), [derive.tex](derive.tex).", ""]
    for r, when, now in order:
        section = r.markdown(figure_prefix="figures/")
        if not now:
            section = section.replace("\n", f"\n\n*From an earlier run ({when}), not re-run now.*\n", 1)
        lines.append(section)
    report = out_dir / "report.md"
    with writing(report, "--out"):
        atomic_write(report, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    summary = out_dir / "summary.json"
    with writing(summary, "--out"):
        write_json_atomic(summary, kind=SUMMARY_KIND, obj={
            "ok": ok and not pending, "pending": pending,
            "all_listed_ok": ok and not pending and all(r.ok for r, _ in earlier.values()),
            "checks": [{"check": r.check, "ok": r.ok, "seconds": r.seconds, "ran_at": when, "rerun": now,
                        "claims": [{"name": c.name, "ok": c.ok, "holds": c.holds, "expected": c.expected,
                                    "summary": c.summary} for c in r.claims]} for r, when, now in order]})


def main(argv=None) -> int:
    """Run the chosen checks, writing the report after each; returns 0 when all pass, 1 otherwise, 2 on bad input
    or when a file cannot be written."""
    parser = build_parser()
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args
    names = list(dict.fromkeys(args.only)) if args.only else list(CHECKS)
    try:
        check_output_dir(args.out, option="--out", names=REPORT_FILES, kind=REPORT_KIND)
        check_output_dir(Path(args.out) / "figures", option="--out", names=[f"{n}*" for n in CHECKS],
                         kind=FIGURES_KIND)
        budget.enforce(_estimate(names, Path(args.out), args), max_minutes=args.max_minutes, prog=parser.prog)
        with writing(args.out, "--out"):
            out_dir = claim_output_dir(args.out, option="--out", names=REPORT_FILES, kind=REPORT_KIND,
                                       files=REPORT_OWNERS)
            claim_output_dir(out_dir / "figures", option="--out", names=[f"{n}*" for n in CHECKS],
                             kind=FIGURES_KIND, files={})
        with folder_lock(out_dir, option="--out", wait=math.inf if args.wait else None):
            return _run_all(parser, args, names, out_dir)
    except ValueError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


def _run_all(parser, args, names, out_dir: Path) -> int:
    earlier, unreadable = _earlier_results(out_dir, names)
    if earlier or unreadable:
        print(f"{parser.prog}: note: {out_dir} also holds results of earlier runs, not re-run now: "
              + ", ".join([f"{n} (ran {w})" for n, (_, w) in earlier.items()]
                          + [f"{n} (unreadable)" for n in unreadable])
              + "; report.md and summary.json list them as such", file=sys.stderr)
    results: list[CheckResult] = []
    ran_at: dict[str, str] = {}
    try:
        for i, name in enumerate(names):
            print(f"[{i + 1}/{len(names)}] {name} ...", flush=True)
            stream = io.StringIO() if args.quiet else sys.stdout
            ran_at[name] = _now()
            result = _run_one(name, out_dir, args, stream)
            result.print_summary(sys.stdout)
            path = out_dir / f"{name}.json"
            with writing(path, "--out"):
                write_json_atomic(path, dict(result.to_dict(), ran_at=ran_at[name]), kind=result_kind(name))
            results.append(result)
            _write_report(out_dir, results, names[i + 1:], earlier, unreadable, ran_at)
    except OutputError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    ok = all(r.ok for r in results)
    print(f"\nverification: {'PASS' if ok else 'FAIL'} ({sum(r.ok for r in results)}/{len(results)} checks); "
          f"report in {out_dir / 'report.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
