"""The command line every check shares: ``--seed``, ``--confidence``, ``--json`` and ``--out``, the run-print-save
driver with exit codes 0 (every claim as expected), 1 (a claim is not) and 2 (bad input), and the family-wise
critical value of the z-tests."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import sys
import time
from pathlib import Path

from sgd_noise_common.cli import BadInput, Parser, add_settings, finite_float, setting
from sgd_noise_common.files import check_output_dir, check_output_file, claim_output_dir, folder_kind, write_json_atomic
from sgd_noise_common.lock import output_locks
from sgd_noise_common.stats import bonferroni_z  # noqa: F401 - re-exported for the checks
from verification import budget

__all__ = ["add_common_options", "check_confidence", "check_outputs", "output_folder", "figure_path",
           "check_with_figure", "run_main", "bonferroni_z", "generator_from_state", "OutputError", "writing",
           "z_test", "format_z", "plan", "parse_or_exit_code", "seed_setting", "confidence_setting",
           "SPECTRUM_OPTION", "spectrum_setting", "check_parser", "table_stream", "ROUNDOFF"]


class OutputError(ValueError):
    """A report, JSON or figure could not be written (a full disk, a folder that went away, ...): bad output,
    exit 2, one line naming the path; never a failed claim."""


@contextlib.contextmanager
def writing(path, option: str):
    """Turn a failure to write ``path`` (an ``OSError``, or the ``ValueError`` that ``sgd_noise_common.files`` raises
    for one) inside the block into an ``OutputError`` naming ``option`` and the path."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"{option} {path}: could not write it ({exc.strerror or exc})") from None
    except ValueError as exc:  # sgd_noise_common.files names the path it could not write: say which option it came from
        if str(path) in str(exc):
            raise OutputError(f"{option}: {exc}") from None
        raise OutputError(f"{option} {path}: could not write it ({exc})") from None


def seed_setting(default: int = 0, help_: str = "random seed"):
    """The ``seed`` field of a check's settings (``--seed``, an integer >= 0; see ``sgd_noise_common.cli.setting``)."""
    return setting(default, help=help_, range=">= 0")


def confidence_setting(default: float = 0.99,
                       help_: str = "family-wise confidence of the statistical verdicts"):
    """The ``confidence`` field of a check's settings (``--confidence``, in (0, 1))."""
    return setting(default, help=help_, range="(0, 1)")


def spectrum_setting(default: str, help_: str):
    """The ``spectrum`` field of a check's settings (``--spectrum``, checked, not built, while the command line is
    parsed)."""
    return setting(default, help=help_, type=SPECTRUM_OPTION)


def SPECTRUM_OPTION(text: str) -> str:  # noqa: N802 - an argparse type, named as the option it checks
    """A ``type=`` for ``--spectrum``: the specification, after ``quadratic.spectra.spectrum_info`` accepts it."""
    import argparse

    from quadratic.spectra import spectrum_info

    try:
        spectrum_info(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a valid spectrum: {exc}") from None
    return text


def add_common_options(p: Parser, settings_cls=None) -> None:
    """Add the options every check shares beyond its settings (``--seed`` and ``--confidence`` are settings
    fields): ``--json PATH``, ``--out DIR``, ``--max-minutes``, and ``--confidence`` (accepted and ignored) when the
    check's settings ``settings_cls`` take none."""
    if settings_cls is None or "confidence" not in {f.name for f in dataclasses.fields(settings_cls)}:
        p.add_argument("--confidence", type=finite_float(0.0, 1.0, low_open=True, high_open=True), default=0.99,
                       help="family-wise confidence of the statistical verdicts (default 0.99; this check has none)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result (claims and rows) as JSON")
    p.add_argument("--out", default=None, metavar="DIR", help="write the figures (PNG) into DIR")
    budget.add_budget_option(p)


def check_parser(prog: str, doc: str, settings_cls) -> Parser:
    """The command line of a check: one option per field of ``settings_cls`` (``sgd_noise_common.cli.add_settings``)
    and the common options (``add_common_options``); ``doc``'s first paragraph is its description."""
    p = Parser(prog=prog, description=doc.split("\n\n")[0])
    add_settings(p, settings_cls)
    add_common_options(p, settings_cls)
    return p


class _Discard(io.TextIOBase):
    """A text stream that keeps nothing: where a ``check`` called from Python writes its table."""

    def write(self, s: str) -> int:
        return len(s)


def table_stream(out):
    """The stream a ``check`` writes its table to: ``out``, or nowhere when it is ``None`` (a check called from
    Python returns its result and prints nothing; the command line's ``run`` passes stdout)."""
    return _Discard() if out is None else out


def plan(args, cost: "budget.Cost", prog: str) -> None:
    """Refuse, before any work, a run whose estimated memory or time (``cost``) cannot fit (``--max-minutes``);
    print the estimate of a long one on stderr (see ``verification.budget.enforce``)."""
    budget.enforce(cost, max_minutes=getattr(args, "max_minutes", budget.DEFAULT_MAX_MINUTES), prog=prog)


def z_test(measured: float, stderr: float, exact: float, scale: float, z_crit: float) -> tuple[float | None, bool]:
    """The z-score of ``measured`` ± ``stderr`` against ``exact``, and whether it agrees (|z| <= ``z_crit``).

    Where the standard error is at the level of round-off (at most ``ROUNDOFF`` x ``scale``, the problem's scale,
    e.g. the loss of Eq. (7)), there is no noise to compare with: z is ``None`` (printed "—") and the measurement
    agrees when it is within that round-off level of the exact value. A z of 1e32 from an error of 1e-35 is never
    reported.

    >>> z_test(1e-35, 1e-36, 0.0, 1e-3, 3.0)
    (None, True)
    >>> z, ok = z_test(1.1, 0.05, 1.0, 1.0, 3.0); round(z, 6), ok
    (2.0, True)
    """
    atol = ROUNDOFF * abs(scale)
    if not (math.isfinite(measured) and math.isfinite(stderr)):
        return math.nan, False
    if stderr <= atol:
        return None, abs(measured - exact) <= atol + stderr
    z = (measured - exact) / stderr
    return z, abs(z) <= z_crit


#: Round-off level relative to the problem's scale: about 1e3 machine epsilons (float64).
ROUNDOFF = 1e3 * 2.220446049250313e-16


def format_z(z, width: int = 7, digits: int = 2) -> str:
    """``z`` for a table, signed with ``digits`` decimals: "—" when there is none (see ``z_test``).

    >>> format_z(None, 3), format_z(1.234, 6)
    ('  —', ' +1.23')
    """
    if z is None or (isinstance(z, float) and math.isnan(z)):
        return f"{'—':>{width}}"
    return f"{z:>+{width}.{digits}f}"


def check_confidence(confidence: float) -> float:
    """``confidence`` after checking it lies in (0, 1).

    Raises:
        ValueError: ``--confidence must lie in (0, 1), got ...``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"--confidence must lie in (0, 1), got {confidence}")
    return confidence


def figure_path(args, name: str) -> Path | None:
    """``DIR/name.png`` when ``--out DIR`` was given (the folder created and marked as ours), else ``None``.

    Args:
        args: the parsed command line (or anything with an ``out`` attribute).
        name: the figure's file name without ``.png``.

    Returns:
        The path of the figure, or ``None`` when no figure was asked for.
    """
    folder = output_folder(args)
    return None if folder is None else folder / f"{name}.png"


#: The kind of folder ``--out DIR`` is (``sgd_noise_common.files``): a folder of figures, which a check may share
#: with others.
FIGURES_KIND = "figures"


def _out_kind(folder, name: str | None) -> str | None:
    """The kind ``--out`` is claimed as: a folder of figures, except for ``derive`` in a report folder (it writes
    its text beside ``report.md``)."""
    return None if name == "derive" and folder_kind(folder) == "report" else FIGURES_KIND


def result_kind(name: str) -> str:
    """The stamp (``sgd_noise_common.files.stamp``) of a check's JSON result: ``verification.<name>``; a file of that
    kind may be replaced by the same check's result, and by nothing else."""
    return f"verification.{name}"


def check_outputs(args, name: str) -> None:
    """Before any work: ``--json`` must be a writable file path and ``--out`` a folder we may write the check's
    files (``name*``) into. Nothing is created here (``output_folder`` creates the folder when the first file is
    written), so that a check refused for bad input leaves nothing behind.

    Raises:
        ValueError: naming the option, the path and what is wrong.
    """
    if getattr(args, "json", None):
        check_output_file(args.json, option="--json", kind=result_kind(name))
    if getattr(args, "out", None):
        check_output_dir(args.out, option="--out", names=[f"{name}*"], kind=_out_kind(args.out, name))


def output_folder(args, name: str | None = None) -> Path | None:
    """``--out DIR``, created and marked as ours (``sgd_noise_common.files.claim_output_dir``), or ``None`` without
    it."""
    if getattr(args, "out", None) is None:
        return None
    with writing(args.out, "--out"):
        kind = _out_kind(args.out, name)
        return claim_output_dir(args.out, option="--out", kind=kind, files={} if kind == FIGURES_KIND else None)


def check_with_figure(result, args, name: str, plot):
    """``result`` with its figure ``--out DIR/name.png`` drawn by ``plot(result, path)`` when ``--out`` was given
    (the thin ``run`` of a check with one figure)."""
    path = figure_path(args, name)
    if path is not None:
        with writing(path, "--out"):
            plot(result, path)
        result.figures.append(str(path))
    return result


def parse_or_exit_code(parser: Parser, argv=None):
    """``parser.parse_args(argv)``, or the exit status it asked for (2 on bad input, one line printed; 0 after
    ``--help``), so that ``main(argv)`` returns its status rather than raising ``SystemExit``."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2


def run_main(parser: Parser, run, argv=None, out=None) -> int:
    """Parse, run, print, write the JSON; exit 0 when every claim is as expected, 1 otherwise, 2 on bad input.

    Args:
        parser: the check's parser (``build_parser()``).
        run: ``run(args, out=stream) -> CheckResult``, the check behind the command line.
        argv: the arguments (default ``sys.argv[1:]``).
        out: text stream for the table and the summary (default stdout).

    Returns:
        The exit status: 0, 1 or 2.
    """
    args = parse_or_exit_code(parser, argv)
    if isinstance(args, int):
        return args
    t0 = time.perf_counter()
    try:
        check_outputs(args, parser.prog.rpartition(".")[2])
        check_confidence(args.confidence)
        with output_locks((getattr(args, "json", None), False), (getattr(args, "out", None), True), option="--json"):
            result = run(args, out=out)
            result.seconds = time.perf_counter() - t0
            result.print_summary(out)
            if args.json:
                with writing(args.json, "--json"):
                    write_json_atomic(args.json, result.to_dict(), kind=result_kind(result.check))
    except (ValueError, BadInput) as exc:  # OutputError and FolderBusy are ValueErrors
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if result.ok else 1


def generator_from_state(state: dict):
    """A ``numpy.random.Generator`` that continues from a saved ``bit_generator.state``.

    A check records the state of its stream after its last draw, so that a figure drawn later (which may simulate
    more) continues the same stream, as if it had been drawn at the end of the check, and draws the same figure
    however often it is called.

    Args:
        state: ``generator.bit_generator.state`` (a dict naming its bit generator, e.g. ``"PCG64"``).

    Returns:
        A new generator whose next draws are those that followed the saved state.

    >>> import numpy as np
    >>> rng = np.random.default_rng(3)
    >>> state = rng.bit_generator.state
    >>> bool(generator_from_state(state).random() == rng.random())
    True
    """
    import numpy as np

    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)
