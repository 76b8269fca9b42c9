"""The advice as a terminal table, a figure and a report (``python -m nets.advise``'s outputs)."""

from __future__ import annotations

import math

import numpy as np

from nets.advise.core import Advice

#: The verified claim: predicted β* within this factor of the measured one (both finite), or neither departs.
AGREEMENT_FACTOR = 2.0


def _f(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def table_rows(a: Advice) -> tuple[list[str], list[list[str]]]:
    """The per-β table (terminal and report)."""
    head = ["beta", "eta", "S", "stable (rho)", "kappa factor", "discrete corr.", "beta S / B_simple",
            "predicted dev.", "mechanism", "measured dev."]
    rows = []
    for r in a.rows:
        if r.impossible:
            rows.append([_f(r.beta), _f(r.eta), str(r.batch_size), "impossible: beta S > N", "", "", "", "", "",
                         ""])
            continue
        measured = ""
        if a.verified_seeds:
            measured = _f(r.measured_deviation) + (f" ({r.measured_diverged} diverged)" if r.measured_diverged
                                                   else "")
        rows.append([_f(r.beta), _f(r.eta), str(r.batch_size),
                     f"{'yes' if r.stable else 'no'} ({_f(r.stability_margin, 4)})", _f(r.kappa_factor),
                     _f(r.discrete_correction), _f(r.noise_over_signal), _f(r.predicted_deviation),
                     r.mechanism or "-", measured])
    return head, rows


def terminal_table(a: Advice) -> str:
    """A fixed-width table for the terminal."""
    head, rows = table_rows(a)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    return "\n".join([line, "-" * len(line)] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows])


def agreement(a: Advice) -> tuple[bool | None, str]:
    """Whether the verified β* agrees with the predicted one within ``AGREEMENT_FACTOR`` (None: not verified)."""
    if not a.verified_seeds:
        return None, "not verified (run with --verify)"
    p, m = a.beta_star, a.beta_star_measured
    if math.isnan(p) and math.isnan(m):
        return True, "neither predicted nor measured curves depart within the betas tried"
    if math.isnan(p) or math.isnan(m):
        return False, (f"predicted beta* {_f(p)}, measured {_f(m)}: one departs within the betas tried, the other "
                       "does not")
    ratio = max(p / m, m / p)
    ok = ratio <= AGREEMENT_FACTOR * (1 + 1e-12)
    return ok, (f"predicted beta* {_f(p)} against measured {_f(m)}: a factor {ratio:.3g} "
                f"({'within' if ok else 'outside'} the factor {AGREEMENT_FACTOR:g})")


def headline(a: Advice, what: str) -> list[str]:
    """At most 5 lines: what, the setting, the verdict with its numbers."""
    m = a.measurements
    star = (f"beta* = {_f(a.beta_star)} ({a.mechanism})" if not math.isnan(a.beta_star)
            else "no beta tried departs")
    ok, text = agreement(a)
    verdict = ("**Verified: agrees.**" if ok else "**Verified: disagrees.**") if ok is not None else "**Not verified.**"
    return [f"**Advice.** {what}: scaling (eta, S) = ({m.eta:g}, {m.batch_size}) by beta keeps the loss curve "
            f"within {100 * a.tol:g} % of beta = 1 up to the predicted {star}; McCandlish's B_simple/S gives beta "
            f"{_f(a.mccandlish_beta)}.",
            f"**Setting.** N = {m.dataset_size}, mu = {m.momentum:g}, gamma = {m.weight_decay:g}; {a.horizon} examples "
            f"from the run's end; {m.bn_statistics}; seeds of the verification: {a.verified_seeds or 'none'}.",
            f"{verdict} {text}."]


def plot(a: Advice, path) -> None:
    """Predicted and measured deviation against β, with each mechanism's bound: where ρ = 1 (stability), where
    βηλ_max = 2, where the κ factor leaves 1 ± tol (finite data) and McCandlish's β."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sgd_noise_common.files import save_figure_atomic

    rows = [r for r in a.rows if not r.impossible]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    ax = axes[0]
    b = np.array([r.beta for r in rows])
    floor = a.tol / 100

    def clip(v):
        v = np.array(v, dtype=float)
        return np.clip(np.where(np.isfinite(v), v, 1e6), floor, 1e6)

    ax.plot(b[1:], clip([r.predicted_deviation for r in rows[1:]]), "o-", color="C0", label="predicted")
    ax.plot(b[1:], clip([r.deviation_invariant_noise for r in rows[1:]]), ":", color="C0",
            label="predicted, eta/S-invariant noise (no finite data)")
    if a.verified_seeds:
        ax.plot(b[1:], clip([r.measured_deviation for r in rows[1:]]), "s-", color="C3",
                label=f"measured ({a.verified_seeds} seeds)")
    ax.axhline(a.tol, color="k", lw=1, ls="--", label=f"tolerance {a.tol:g}")
    m = a.measurements
    marks = []
    unstable = [r.beta for r in rows if not r.stable]
    if unstable:
        marks.append((unstable[0], "C1", "rho >= 1 (stability)"))
    edge = 2.0 * (1 + m.momentum) / (m.eta * m.lambda_max)
    marks.append((edge, "C2", "beta eta lambda_max = 2(1+mu)"))
    fd = [r.beta for r in rows if r.kappa_factor < 1 - a.tol]
    if fd:
        marks.append((fd[0], "C4", f"kappa factor < {1 - a.tol:g} (finite data)"))
    if math.isfinite(a.mccandlish_beta) and a.mccandlish_beta > 0:
        marks.append((a.mccandlish_beta, "C5", "B_simple / S (McCandlish)"))
    for x, color, label in marks:
        ax.axvline(x, color=color, lw=1, label=label)
    ax.set(xscale="log", yscale="log", xlabel="beta", ylabel="max |L_beta - L_1| / L_1 over the horizon",
           title="Departure from beta = 1")
    ax.legend(fontsize=7)
    ax = axes[1]
    e = np.array(a.checkpoints)
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        ax.plot(e, np.clip(np.array(r.predicted_curve, dtype=float), None, 1e6), "--", color=color)
        if a.verified_seeds and r.measured_curve:
            ax.plot(e, np.clip(np.array(r.measured_curve, dtype=float), None, 1e6), "-", color=color,
                    label=f"beta {r.beta:g}")
        else:
            ax.plot([], [], "--", color=color, label=f"beta {r.beta:g}")
    ax.set(yscale="log", xlabel="examples from the run's end", ylabel="loss (the advisor's)",
           title="Loss curves: predicted (dashed), measured (solid)")
    ax.legend(fontsize=7)
    save_figure_atomic(fig, path, kind="advice")
    plt.close(fig)


def report(a: Advice, what: str, figure_name: str, *, choices: list[str]) -> str:
    """``report.md``: headline, figure, the per-β table, then the details."""
    m = a.measurements
    head, rows = table_rows(a)
    lines = ["# Advice: scaling the batch", ""] + [line + "  " for line in headline(a, what)] + [""]
    lines += [f"![advice]({figure_name})", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c or " " for c in r) + " |" for r in rows]
    lines += ["", "## Details", "",
              "**What was measured at the run's end** (the measured loss: "
              f"{m.bn_statistics}, {m.examples} examples, L2 term included; its accuracy {m.train_accuracy:.4f}):",
              "",
              f"- loss {m.loss:.5g}; lambda_max {m.lambda_max:.4g} (eta lambda_max = {m.eta * m.lambda_max:.3g}); top-"
              f"{a.top_k}: {', '.join(f'{x:.4g}' for x in m.top_eigenvalues)}"
              + ("" if m.eig_converged else " (not converged)") + ";",
              f"- Tr(H) {m.trace_h:.4g} ± {m.trace_h_stderr:.2g}; Tr(C) {m.trace_c:.4g} ± {m.trace_c_stderr:.2g}; "
              f"|grad L|^2 {m.grad_sq:.4g} ± {m.grad_sq_stderr:.2g}; B_simple {'>= ' if m.b_simple_lower_bound else ''}"
              f"{_f(m.b_simple, 4)};",
              f"- batch sharpness {m.batch_sharpness:.4g} ± {m.batch_sharpness_stderr:.2g} (eta/2 times it: "
              f"{m.eta / 2 * m.batch_sharpness:.3g});",
              f"- along the top-k: noise v'Cv {', '.join(f'{x:.3g}' for x in m.top_noise)}; per-example curvature "
              f"spread {', '.join(f'{x:.3g}' for x in m.curvature_spread)};",
              f"- N = {m.dataset_size}, eta = {m.eta:g}, S = {m.batch_size}, mu = {m.momentum:g}, gamma = "
              f"{m.weight_decay:g}; {m.num_params} parameters; measured in {m.seconds:.0f} s.", ""]
    if a.verified_seeds:
        accs = ", ".join(f"beta {r.beta:g}: {_f(r.measured_val_accuracy, 4)}" for r in a.rows if not r.impossible)
        lines += [f"**Verification.** {a.verified_seeds} batch orders per beta, each trained from the run's weights "
                  f"for {a.horizon} examples; the loss measured as above at {len(a.checkpoints)} checkpoints; the "
                  f"deviation is that of the mean curve. Validation accuracy at the end (mean): {accs}.", ""]
    lines += ["**Choices.**", ""] + [f"- {c}" for c in choices] + [""]
    if a.notes:
        lines += ["**Notes.**", ""] + [f"- {n}" for n in a.notes] + [""]
    return "\n".join(lines)
