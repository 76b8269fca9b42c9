"""The command line every check shares: ``--seed``, ``--confidence``, ``--json`` and ``--out``, the run-print-save
driver with exit codes 0 (every claim as expected), 1 (a claim is not) and 2 (bad input), and the family-wise
critical value of the z-tests."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common.cli import BadInput, Parser
from common.files import check_output_dir, check_output_file, claim_output_dir, write_json_atomic

__all__ = ["add_common_options", "check_confidence", "check_outputs", "output_folder", "figure_path",
           "check_with_figure", "run_main", "bonferroni_z", "generator_from_state"]


def add_common_options(p: Parser, *, seed: int = 0, confidence: float = 0.99) -> None:
    """Add ``--seed``, ``--confidence``, ``--json PATH`` and ``--out DIR``, shared by every check, to ``p``."""
    p.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed})")
    p.add_argument("--confidence", type=float, default=confidence,
                   help=f"family-wise confidence of the statistical verdicts (default {confidence})")
    p.add_argument("--json", default=None, metavar="PATH", help="write the result (claims and rows) as JSON")
    p.add_argument("--out", default=None, metavar="DIR", help="write the figures (PNG) into DIR")


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


def check_outputs(args, name: str) -> None:
    """Before any work: ``--json`` must be a writable file path and ``--out`` a folder we may write the check's
    files (``name*``) into. Nothing is created here (``output_folder`` creates the folder when the first file is
    written), so that a check refused for bad input leaves nothing behind.

    Raises:
        ValueError: naming the option, the path and what is wrong.
    """
    if getattr(args, "json", None):
        check_output_file(args.json, option="--json")
    if getattr(args, "out", None):
        check_output_dir(args.out, option="--out", names=[f"{name}*"])


def output_folder(args) -> Path | None:
    """``--out DIR``, created and marked as ours (``common.files.claim_output_dir``), or ``None`` without it."""
    if getattr(args, "out", None) is None:
        return None
    return claim_output_dir(args.out, option="--out")


def check_with_figure(result, args, name: str, plot):
    """``result`` with its figure ``--out DIR/name.png`` drawn by ``plot(result, path)`` when ``--out`` was given
    (the thin ``run`` of a check with one figure)."""
    path = figure_path(args, name)
    if path is not None:
        plot(result, path)
        result.figures.append(str(path))
    return result


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
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        check_outputs(args, parser.prog.rpartition(".")[2])
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


def bonferroni_z(confidence: float, tests: int) -> float:
    """Two-sided critical |z| so that ``tests`` z-tests all pass with probability >= ``confidence`` under the null.

    Args:
        confidence: the family-wise confidence, in (0, 1).
        tests: the number of z-tests in the family (at least 1 is assumed).

    Returns:
        The critical value z with P(|Z| > z) = (1 − confidence)/tests.

    >>> round(bonferroni_z(0.95, 1), 3)
    1.96
    """
    from scipy.stats import norm

    alpha = (1.0 - confidence) / max(tests, 1)
    return float(norm.isf(alpha / 2.0))


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
