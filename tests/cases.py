"""Cases the test files share, in one home: the checks by name, the smallest training run, and running a command
in-process the way a user runs it (exit code, one-line error, time taken).

Fixtures built from these (a finished tiny run) live in ``conftest.py``.
"""

from __future__ import annotations

import io
import time
from contextlib import redirect_stdout
from typing import NamedTuple

from verification import breakdown, derive, fdr, invariance, noise_scale, ou_check

#: Every check of the theory, by its command name.
CHECKS = {"ou_check": ou_check, "invariance": invariance, "breakdown": breakdown, "fdr": fdr,
          "noise_scale": noise_scale, "derive": derive}

#: ``nets.train`` options for the smallest run that exercises the whole pipeline (seconds on a CPU).
TINY_TRAIN = ["--dataset", "synthetic-mnist", "--model", "mlp", "--width", "0.125", "--batch-size", "32", "--quiet"]


class Outcome(NamedTuple):
    """What a command did: its exit code, what it wrote to stderr and stdout, and its wall time."""

    code: int
    err: str
    seconds: float
    out: str


def run_cli(main, argv, capsys) -> Outcome:
    """``main(argv)`` in-process, stdout captured; argparse's own refusals (``SystemExit``) count as exit codes."""
    t0 = time.perf_counter()
    with redirect_stdout(io.StringIO()) as out:
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return Outcome(code, capsys.readouterr().err, time.perf_counter() - t0, out.getvalue())


def half_mse(out, target, reduction="mean"):
    """½(ŷ − y)² per example: the loss of ``quadratic.LeastSquares``, as a torch loss function."""
    per = 0.5 * (out.reshape(-1) - target.reshape(-1)) ** 2
    return per.mean() if reduction == "mean" else per


def linear_problem(n=200, spectrum=(4.0, 2.0, 1.0, 0.6, 0.4, 0.3), seed=0, noise_std=1.0):
    """A *quadratic network*: ``quadratic.LeastSquares`` data (rotated inputs with the given spectrum) and a linear
    model without bias in float64, whose loss under ``half_mse`` is exactly that problem's. Returns
    ``(problem, model, inputs, targets)``; the model's initial weights are torch's own draw."""
    import numpy as np
    import torch
    from torch import nn

    from quadratic import LeastSquares

    p = LeastSquares.sample(n, list(spectrum), noise_std=noise_std, rotate=True, rng=np.random.default_rng(seed))
    model = nn.Linear(p.dim, 1, bias=False).double()
    return p, model, torch.tensor(p.inputs), torch.tensor(p.targets)
