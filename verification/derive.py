r"""``python -m verification.derive``: the symbolic derivation, from the SGD update to Eq. (7) and beyond.

Prints (as text, or LaTeX with ``--latex``) the chain of ``sde.symbolic`` derivations: SGD as the Euler–Maruyama
step of dθ = −g dt + √(η/S) R dW (η and S entering only as η/S), the OU stationary variance η/(2S), Eq. (7)
E(l) = η Tr(H)/(4S), the exact variance of discrete SGD (with weight decay, with momentum), its series in η (the
first correction η² Tr(H²)/(8S)) and the finite-data factor (N − S)/(S(N − 1)). Then it checks each symbolic result
against the numeric closed forms of ``sde.theory`` at random points (relative agreement 1e-9; 1e-5 for the
truncated series): a derivation that
disagrees with the numbers the rest of the toolkit uses fails the check. ``--out DIR`` writes ``derive.md`` (text)
and ``derive.tex``.

Exit status: 0 when every result agrees, 1 otherwise, 2 on bad input.

From Python, without the command line::

    from verification.derive import DeriveSettings, check
    result = check(DeriveSettings(points=5))
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quadratic import Quadratic, batch_noise_factor
from sde import eq7_loss, expected_loss, stationary_covariance, symbolic
from sgd_noise_common import validate
from sgd_noise_common.claims import CheckResult, Claim
from sgd_noise_common.cli import Parser, add_settings, from_args, options_dict, setting
from sgd_noise_common.files import atomic_write
from verification import budget
from verification.budget import Cost
from verification.cli import add_common_options, output_folder, plan, run_main, seed_setting, table_stream, writing

__all__ = ["DeriveSettings", "Consistency", "DeriveResult", "build_parser", "settings_from_args",
           "consistency_checks", "check", "estimate", "write_derivation", "run", "main"]

#: Seconds per random point of the comparisons (sympy substitutions), measured and rounded up; and the fixed cost
#: of the derivations themselves.
SECONDS_PER_POINT = 0.02
SECONDS_FIXED = 3.0

RTOL = 1e-9
# The truncated η-series has a remainder of relative size (η λ_max)² = 1e-6 at the η used; allow 10x that.
SERIES_RTOL = 1e-5
TITLE = "symbolic derivation from the SGD update to Eq. (7) and its corrections"


@dataclass(frozen=True, kw_only=True)
class DeriveSettings:
    """How many random points each numeric comparison of ``derive`` takes, and their seed.

    The check has no statistical verdict, so it takes no confidence (the command line's ``--confidence`` is
    accepted and ignored, as by every check). How the derivation is printed (``--latex``, ``--quiet``) is the
    command line's business: ``check`` returns it as text and LaTeX.

    Attributes:
        points: random points per numeric comparison (``--points``), >= 1.
        seed: seed of the random points.

    Raises:
        ValueError: on a bad value, naming the option as the command line spells it, e.g.
            ``--points must be >= 1, got 0``.
    """

    points: int = setting(20, help="random points per numeric comparison", range=">= 1")
    seed: int = seed_setting()

    def __post_init__(self):
        """Check every value (``ValueError`` naming the option) and normalise it."""
        if isinstance(self.points, bool) or not isinstance(self.points, (int, np.integer)) or self.points < 1:
            raise ValueError(f"--points must be >= 1, got {self.points}")
        object.__setattr__(self, "seed", validate.positive_int("--seed", self.seed, minimum=0))


def build_parser() -> Parser:
    """The command line of ``python -m verification.derive``: an option per field of ``DeriveSettings``, how to
    print the derivation (``--latex``, ``--quiet``), and the common options."""
    p = Parser(prog="python -m verification.derive", description=__doc__.split("\n\n")[0])
    add_settings(p, DeriveSettings)
    p.add_argument("--latex", action="store_true", help="print LaTeX instead of text")
    p.add_argument("--quiet", action="store_true", help="do not print the derivations, only the checks")
    add_common_options(p, DeriveSettings)
    return p


def settings_from_args(args) -> DeriveSettings:
    """The settings the parsed command line describes (raises ``ValueError`` naming the option on a bad value)."""
    return from_args(DeriveSettings, args)


@dataclass(frozen=True)
class Consistency:
    """One symbolic result against ``sde.theory``.

    Attributes:
        name: the claim's name, e.g. ``"eq7"``.
        statement: what is compared.
        worst_relative_error: the largest relative difference over the random points.
        tolerance: the largest allowed (``RTOL``, or ``SERIES_RTOL`` for the truncated series).
    """

    name: str
    statement: str
    worst_relative_error: float
    tolerance: float

    @property
    def holds(self) -> bool:
        """Whether the worst relative difference is within the tolerance."""
        return self.worst_relative_error <= self.tolerance


def consistency_checks(points: int, *, rng: np.random.Generator) -> list[Consistency]:
    """Each symbolic result of ``sde.symbolic`` against the numeric closed forms of ``sde.theory``.

    At ``points`` random (λ, c, γ, μ, S, η, N), in stable ranges: the OU variance, Eq. (7), the SGD variance with
    weight decay, the momentum variance, the η-series of the discrete correction and the finite-data factor.

    Returns:
        One ``Consistency`` per result, with its worst relative difference and its tolerance.
    """
    sy = symbolic
    checks = {
        "ou-variance": ("OU stationary variance eta c/(2 S lambda) = continuous Lyapunov solution", []),
        "eq7": ("Eq. (7): eta Tr(H)/(4S) = expected_loss(process='sde') with C = H", []),
        "sgd-variance": ("discrete SGD variance with weight decay = discrete Lyapunov solution", []),
        "momentum-variance": ("SGD-with-momentum variance = augmented-state Lyapunov solution", []),
        "first-correction": ("E_sgd - Eq.(7) = eta^2 Tr(H^2)/(8S) + O(eta^3) (series to eta^3 vs exact)", []),
        "finite-data": ("without replacement: Cov(g_B) factor (N-S)/(S(N-1)) = quadratic.batch_noise_factor", []),
    }
    ou = sy.ou_stationary_variance(noise=sy.c).result
    sgd = sy.sgd_stationary_variance(weight_decay=True).result
    mom = sy.momentum_stationary_variance(weight_decay=True).result
    series = sy.discrete_correction_series().result
    fin = sy.finite_data_factor().result
    for _ in budget.progress(range(points), desc="derive"):
        lam, c = rng.uniform(0.05, 2.0), rng.uniform(0.05, 2.0)
        gamma, mu = rng.uniform(0.0, 0.5), rng.uniform(0.0, 0.95)
        s = int(rng.integers(1, 64))
        eta = rng.uniform(0.05, 0.95) * 2.0 / (lam + gamma)
        eta_m = rng.uniform(0.05, 0.95) * 2.0 * (1.0 + mu) / (lam + gamma)
        q = Quadratic.from_spectrum([lam], noise_covariance=[c])
        sub = {sy.eta: eta, sy.S: s, sy.lam: lam, sy.c: c, sy.gamma: gamma, sy.mu: mu}

        def rel(a, b):
            return abs(float(a) - float(b)) / max(abs(float(b)), 1e-300)

        checks["ou-variance"][1].append(rel(ou.subs(sub), stationary_covariance(q, eta, s, process="sde")[0, 0]))
        spec = rng.uniform(0.05, 1.0, 5)
        qh = Quadratic.from_spectrum(spec)
        checks["eq7"][1].append(rel(eq7_loss(qh, eta, s), expected_loss(qh, eta, s, process="sde")))
        checks["sgd-variance"][1].append(
            rel(sgd.subs(sub), stationary_covariance(q, eta, s, weight_decay=gamma)[0, 0]))
        checks["momentum-variance"][1].append(
            rel(mom.subs(sub | {sy.eta: eta_m}),
                stationary_covariance(q, eta_m, s, momentum=mu, weight_decay=gamma)[0, 0]))
        # The series to order η³ against the exact excess over Eq. (7) at η λ_max = 1e-3: the remainder is
        # O(η⁴), relative size (η λ_max)² = 1e-6 of the η² term (tolerance SERIES_RTOL).
        small = 1e-3 / spec.max()
        exact_excess = expected_loss(qh, small, s) - eq7_loss(qh, small, s)
        terms = sum(float((series.coeff(sy.eta, 2) * small**2 + series.coeff(sy.eta, 3) * small**3)
                          .subs({sy.lam: x, sy.S: s})) for x in spec)
        checks["first-correction"][1].append(rel(terms, exact_excess))
        n = int(rng.integers(s, 10 * s + 2)) if s > 1 else int(rng.integers(2, 100))
        checks["finite-data"][1].append(
            rel(fin.subs({sy.N: n, sy.S: s}), batch_noise_factor(s, n)) if n > 1 else 0.0)
    return [Consistency(k, v[0], float(max(v[1])), SERIES_RTOL if k == "first-correction" else RTOL)
            for k, v in checks.items()]


@dataclass
class DeriveResult(CheckResult):
    """``check``'s result, with the derivation as text and LaTeX for ``write_derivation`` (not part of the JSON).

    Attributes:
        text: the derivation as plain text.
        tex: the derivation as LaTeX.
        config: the settings the check ran with.
    """

    text: str = ""
    tex: str = ""
    config: DeriveSettings | None = None


def check(settings: DeriveSettings, *, out=None) -> DeriveResult:
    """Derive the chain of symbolic results and check each against ``sde.theory`` at random points.

    Claims, all expected to hold (worst relative difference over the points within ``RTOL``, or ``SERIES_RTOL``
    for the truncated series): ``ou-variance``, ``eq7``, ``sgd-variance``, ``momentum-variance``,
    ``first-correction`` and ``finite-data`` (see ``consistency_checks``).

    Args:
        settings: the number of points and the seed.
        out: text stream for one line per comparison (default: none; the command line passes stdout, and prints
            the derivation before them).

    Returns:
        A ``DeriveResult``: the claims, one row per comparison and the derivation as text and LaTeX.
    """
    out = table_stream(out)
    derivations = symbolic.all_derivations()
    text = "\n\n".join(str(d) for d in derivations)
    tex = "\n\n".join(d.latex() for d in derivations)
    results = consistency_checks(settings.points, rng=np.random.default_rng(settings.seed))
    claims = []
    for r in results:
        claims.append(Claim(r.name, r.statement, holds=r.holds,
                            summary=f"worst relative difference over {settings.points} random points: "
                                    f"{r.worst_relative_error:.1e} (<= {r.tolerance:g}?)",
                            numbers=dict(worst_relative_error=r.worst_relative_error)))
        out.write(f"{r.name:<20} worst relative difference {r.worst_relative_error:.1e}\n")
    rows = [dict(name=r.name, statement=r.statement, worst_relative_error=r.worst_relative_error,
                 tolerance=r.tolerance) for r in results]
    return DeriveResult("derive", TITLE, claims, rows=rows, settings=options_dict(settings), text=text, tex=tex,
                        config=settings)


def write_derivation(result: DeriveResult, directory) -> list[str]:
    """Write the derivation into ``directory`` as ``derive.md`` (text in a code block) and ``derive.tex``.

    Returns:
        The two paths written.
    """
    base = Path(directory)
    for suffix, content in (("md", "```\n" + result.text + "\n```\n"), ("tex", result.tex + "\n")):
        path = base / f"derive.{suffix}"
        with writing(path, "--out"):
            atomic_write(path, lambda tmp, content=content: Path(tmp).write_text(content))
    return [str(base / "derive.md"), str(base / "derive.tex")]


def run(args, out=None) -> CheckResult:
    """The check behind the command line: ``check`` plus ``derive.md`` and ``derive.tex`` into ``--out DIR``.

    Args:
        args: the parsed command line (``build_parser()``).
        out: text stream for the derivation (text, or LaTeX with ``--latex``; none with ``--quiet``) and the
            comparisons (default stdout).

    Returns:
        ``check``'s result; with ``--out``, the files written are listed in its settings under ``written``.
    """
    out = sys.stdout if out is None else out
    settings = settings_from_args(args)
    plan(args, estimate(settings), "python -m verification.derive")
    lines = io.StringIO()
    result = check(settings, out=lines)
    if not args.quiet:
        out.write((result.tex if args.latex else result.text) + "\n\n")
    out.write(lines.getvalue())
    folder = output_folder(args, "derive")
    if folder is not None:
        with writing(folder, "--out"):
            result.settings["written"] = write_derivation(result, folder)
    return result


def estimate(settings: DeriveSettings) -> Cost:
    """The time of ``check(settings)`` (``SECONDS_PER_POINT`` per point, ``SECONDS_FIXED`` besides); its memory is
    small and fixed."""
    cost = Cost()
    cost.time("the derivation", SECONDS_FIXED)
    cost.time(f"--points={settings.points}", SECONDS_PER_POINT * settings.points)
    cost.memory(f"--points={settings.points}", 6 * 8.0 * settings.points + 2**28)
    return cost


def main(argv=None, out=None) -> int:
    """``python -m verification.derive``; returns the exit status (0 pass, 1 a result disagrees, 2 bad input)."""
    return run_main(build_parser(), run, argv, out)


if __name__ == "__main__":
    sys.exit(main())
