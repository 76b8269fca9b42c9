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
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from quadratic import Quadratic
from quadratic import batch_noise_factor
from sde import eq7_loss, expected_loss, stationary_covariance, symbolic
from common.cli import Parser
from common.files import atomic_write
from common.claims import CheckResult, Claim
from verification.cli import add_common_options, run_main

__all__ = ["main", "run", "build_parser", "consistency_checks"]

RTOL = 1e-9
# The truncated η-series has a remainder of relative size (η λ_max)² = 1e-6 at the η used; allow 10x that.
SERIES_RTOL = 1e-5


def build_parser() -> Parser:
    p = Parser(prog="python -m verification.derive", description=__doc__.split("\n\n")[0])
    p.add_argument("--latex", action="store_true", help="print LaTeX instead of text")
    p.add_argument("--points", type=int, default=20, help="random points per numeric comparison (default 20)")
    p.add_argument("--quiet", action="store_true", help="do not print the derivations, only the checks")
    add_common_options(p)
    return p


def consistency_checks(rng: np.random.Generator, points: int) -> list[tuple[str, str, float]]:
    """``(name, statement, worst relative error, tolerance)`` of each symbolic result against ``sde.theory``."""
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
    for _ in range(points):
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
    return [(k, v[0], float(max(v[1])), SERIES_RTOL if k == "first-correction" else RTOL)
            for k, v in checks.items()]


def run(args, out=None) -> CheckResult:
    out = sys.stdout if out is None else out
    if args.points < 1:
        raise ValueError(f"--points must be >= 1, got {args.points}")
    derivations = symbolic.all_derivations()
    text = "\n\n".join(str(d) for d in derivations)
    tex = "\n\n".join(d.latex() for d in derivations)
    if not args.quiet:
        out.write((tex if args.latex else text) + "\n\n")
    rng = np.random.default_rng(args.seed)
    results = consistency_checks(rng, args.points)
    claims = []
    for name, statement, worst, tol in results:
        claims.append(Claim(name, statement, holds=worst <= tol,
                            summary=f"worst relative difference over {args.points} random points: {worst:.1e} "
                                    f"(<= {tol:g}?)",
                            numbers=dict(worst_relative_error=worst)))
        out.write(f"{name:<20} worst relative difference {worst:.1e}\n")
    result = CheckResult("derive", "symbolic derivation from the SGD update to Eq. (7) and its corrections",
                         claims, rows=[dict(name=n, statement=s, worst_relative_error=w, tolerance=t)
                               for n, s, w, t in results],
                         settings=dict(points=args.points, seed=args.seed))
    if args.out:
        base = Path(args.out)
        for suffix, content in (("md", "```\n" + text + "\n```\n"), ("tex", tex + "\n")):
            path = base / f"derive.{suffix}"
            atomic_write(path, lambda tmp, content=content: Path(tmp).write_text(content))
        result.settings["written"] = [str(base / "derive.md"), str(base / "derive.tex")]
    return result


def main(argv=None, out=None) -> int:
    return run_main(build_parser(), run, argv, out)


if __name__ == "__main__":
    sys.exit(main())
