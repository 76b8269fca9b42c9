r"""Symbolic derivations (sympy) of the paper's theory and of the exact discrete-time results beyond it.

Each function returns a ``Derivation``: the steps (a sentence and a sympy expression each) and the ``result``, an
expression that the tests evaluate against the numeric closed forms in ``sde.theory``. ``str(d)`` prints it as
text, ``d.latex()`` as LaTeX. All symbols carry their assumptions (η, S, λ, c > 0; 0 <= μ < 1 enters through
1 − μ > 0), so sympy simplifies square roots and signs correctly.

Example:
    >>> d = ou_stationary_variance()
    >>> d.result
    eta/(2*S)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

__all__ = [
    "Derivation",
    "SYMBOLS",
    "sgd_as_euler_maruyama",
    "ou_stationary_variance",
    "ou_expected_loss",
    "sgd_stationary_variance",
    "momentum_stationary_variance",
    "discrete_correction_series",
    "finite_data_factor",
    "all_derivations",
]

eta, S, lam, c, dt, gamma, N = sp.symbols("eta S lambda c dt gamma N", positive=True)
mu = sp.Symbol("mu", nonnegative=True)
#: The symbols, by name, for substituting values into a result.
SYMBOLS = {"eta": eta, "S": S, "lambda": lam, "c": c, "dt": dt, "gamma": gamma, "N": N, "mu": mu}


@dataclass
class Derivation:
    """A titled sequence of steps ending in ``result``."""

    title: str
    steps: list = field(default_factory=list)
    result: sp.Expr | None = None

    def step(self, text: str, expr) -> "Derivation":
        """Append one step (a sentence and its sympy expression); returns the derivation, for chaining."""
        self.steps.append((text, expr))
        return self

    def latex(self) -> str:
        """The derivation as LaTeX: one ``text: $expr$`` line per step."""
        lines = [f"\\paragraph{{{self.title}}}"]
        lines += [f"{text}: ${sp.latex(expr)}$\n" for text, expr in self.steps]
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [self.title, "=" * len(self.title)]
        for text, expr in self.steps:
            lines.append(f"{text}:")
            lines.append("    " + sp.pretty(expr, use_unicode=True).replace("\n", "\n    "))
        return "\n".join(lines)


def sgd_as_euler_maruyama() -> Derivation:
    """SGD θ' = θ − η g + (η/√S) R ε is the Euler–Maruyama step dt = η of dθ = −g dt + √(η/S) R dW.

    ``result`` is the SDE's diffusion coefficient written with r = η/S: it contains no η or S of its own.
    """
    theta, g, R, xi, r = sp.symbols("theta g R xi r", real=True)
    d = Derivation("SGD is the Euler-Maruyama discretisation of the SDE (paper Eqs. 4-5)")
    sgd = theta - eta * g + eta / sp.sqrt(S) * R * xi
    d.step("SGD step, minibatch noise g_B - g = R xi / sqrt(S), xi ~ N(0, I)", sp.Eq(sp.Symbol("theta_next"), sgd))
    drift, diffusion = -g, sp.sqrt(eta / S) * R
    em = theta + drift * dt + diffusion * sp.sqrt(dt) * xi
    d.step("Euler-Maruyama step of d theta = -g dt + sqrt(eta/S) R dW, with dW = sqrt(dt) xi", em)
    d.step("at dt = eta, Euler-Maruyama minus SGD", sp.simplify(em.subs(dt, eta) - sgd))
    ratio = sp.simplify(diffusion.subs(eta, r * S))
    d.step("diffusion coefficient with eta = r S: only the ratio r = eta/S remains", ratio)
    d.result = ratio
    return d


def ou_stationary_variance(*, noise=None) -> Derivation:
    """Stationary variance of dz = −λ z dt + √(η c/S) dW: σ² = η c/(2Sλ), and η/(2S) for c = λ (C = H)."""
    s2 = sp.Symbol("sigma2", positive=True)
    c_ = lam if noise is None else noise
    d = Derivation("Stationary variance of the OU process (paper Eq. 6)")
    lyap = sp.Eq(2 * lam * s2, eta * c_ / S)
    d.step("continuous Lyapunov equation, one eigendirection (H Sigma + Sigma H = (eta/S) C)", lyap)
    sol = sp.solve(lyap, s2)[0]
    d.step("solution" + (" with C = H (c = lambda)" if noise is None else ""), sol)
    d.result = sp.simplify(sol)
    return d


def ou_expected_loss() -> Derivation:
    """E(l) = ½ Σ λ_i σ_i² = η/(4S) Tr H for C = H (paper Eq. 7)."""
    i, q = sp.symbols("i q", integer=True, positive=True)
    lam_i = sp.IndexedBase("lambda")[i]
    var = ou_stationary_variance().result
    d = Derivation("Expected loss at the OU stationary law (paper Eq. 7)")
    el = sp.Sum(sp.Rational(1, 2) * lam_i * var, (i, 1, q))
    d.step("E(l) = 1/2 sum_i lambda_i E(z_i^2)", el)
    res = sp.simplify(el.doit())
    res = sp.factor_terms(res)
    d.step("= eta/(4S) Tr(H)", res)
    d.result = res
    return d


def sgd_stationary_variance(*, weight_decay: bool = False) -> Derivation:
    """Discrete SGD, one eigendirection: s = (1 − ηa)² s + η² c/S gives s = η c/(S a (2 − η a)), a = λ (+ γ)."""
    s2 = sp.Symbol("s", positive=True)
    a = lam + gamma if weight_decay else lam
    d = Derivation("Stationary variance of discrete SGD" + (" with weight decay" if weight_decay else ""))
    eq = sp.Eq(s2, (1 - eta * a) ** 2 * s2 + eta**2 * c / S)
    d.step("discrete Lyapunov equation, one eigendirection", eq)
    sol = sp.factor(sp.solve(eq, s2)[0])
    d.step("solution (finite iff 0 < eta a < 2)", sol)
    d.result = sol
    return d


def momentum_stationary_variance(*, weight_decay: bool = False) -> Derivation:
    """SGD with momentum (b ← μb + g, θ ← θ − ηb), one eigendirection, by the 2×2 discrete Lyapunov equation.

    ``result`` = η c / (S a (1 − μ)(2 − η a/(1 + μ))) with a = λ (+ γ).
    """
    a = lam + gamma if weight_decay else lam
    p11, p12, p22 = sp.symbols("p11 p12 p22")
    P = sp.Matrix([[p11, p12], [p12, p22]])
    A = sp.Matrix([[1 - eta * a, -eta * mu], [a, mu]])
    B = sp.Matrix([-eta, 1])
    d = Derivation("Stationary variance of SGD with momentum" + (" and weight decay" if weight_decay else ""))
    d.step("state (theta, b): x' = A x + B xi, with A", A)
    eqs = P - (A * P * A.T + B * (c / S) * B.T)
    d.step("P = A P A^T + B (c/S) B^T, entries", eqs)
    sol = sp.solve([eqs[0, 0], eqs[0, 1], eqs[1, 1]], [p11, p12, p22], dict=True)[0]
    var = sp.factor(sp.simplify(sol[p11]))
    d.step("theta-variance", var)
    d.result = var
    return d


def discrete_correction_series(order: int = 3) -> Derivation:
    """Series in η of SGD's per-direction loss with C = H: ηλ/(4S) + η²λ²/(8S) + …, i.e.
    E(l) = η Tr(H)/(4S) + η² Tr(H²)/(8S) + O(η³): the first correction to Eq. (7)."""
    per_dir = sp.Rational(1, 2) * lam * sgd_stationary_variance().result.subs(c, lam)
    d = Derivation("Discrete-time correction to Eq. (7), C = H")
    d.step("exact SGD loss per eigendirection", sp.simplify(per_dir))
    ser = sp.series(per_dir, eta, 0, order + 1).removeO()
    d.step(f"series in eta to order {order}", sp.expand(ser))
    d.step("first term is Eq. (7) per direction; the next is eta^2 lambda^2/(8S)", sp.expand(ser).coeff(eta, 2))
    d.result = sp.expand(ser)
    return d


def finite_data_factor() -> Derivation:
    """Sampling S of N examples without replacement: Cov(g_B) = (N − S)/(S(N − 1)) Σ_pop."""
    sigma = sp.Symbol("Sigma_pop", positive=True)
    d = Derivation("Minibatch covariance without replacement")
    p_in = S / N
    p_pair = S * (S - 1) / (N * (N - 1))
    var_i = p_in * (1 - p_in)
    cov_ij = p_pair - p_in**2
    d.step("indicator of example n in the batch: Var(I_n)", var_i)
    d.step("Cov(I_n, I_m), n != m", sp.factor(cov_ij))
    # Var(Σ I_n g_n) with Σ_n g_n = 0 (centred): Σ g_n² (Var − Cov), and Σ_n g_n² = N Σ_pop.
    var_mean = sp.factor(sp.simplify(N * sigma * (var_i - cov_ij) / S**2))
    d.step("Var(g_B) = N Sigma_pop (Var(I) - Cov(I, I')) / S^2 (using sum_n g_n = 0)", var_mean)
    d.result = sp.factor(sp.simplify(var_mean / sigma))
    return d


def all_derivations() -> list[Derivation]:
    """Every derivation, in the order of the paper's argument."""
    return [sgd_as_euler_maruyama(), ou_stationary_variance(), ou_expected_loss(), sgd_stationary_variance(),
            sgd_stationary_variance(weight_decay=True), momentum_stationary_variance(),
            discrete_correction_series(), finite_data_factor()]
