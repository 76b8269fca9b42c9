"""The network experiments end to end at the smoke scale: every output written, finished runs skipped when started
again, a failing run reported while the others finish, and a sweep on a local Ray instance."""

import csv
import json
import re

import pytest

pytest.importorskip("torch")

from nets.experiments import (  # noqa: E402
    EXPERIMENTS,  # noqa: E402
    fig2,
    fig3,
    fig5,
    sweep,
)
from nets.experiments import __main__ as dispatch  # noqa: E402
from nets.experiments.cli import build_parser  # noqa: E402
from nets.experiments.scales import base_config  # noqa: E402

OUTPUTS = ("config.json", "environment.json", "runs.csv", "history.csv", "report.md")


def assert_tables_render(markdown: str) -> None:
    """Every row of every Markdown table has as many cells as its header (a cell's own ``|`` escaped)."""
    import re

    width = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        cells = len(re.findall(r"(?<!\\)\|", line)) - 1
        if width is None:
            width = cells
        assert cells == width, line


def test_a_cell_with_a_pipe_stays_one_cell():
    from nets.experiments.analysis import markdown_row

    assert_tables_render("\n".join([markdown_row(["|grad L|", "b"]), "|---|---|", markdown_row(["x", "<|g|^2>"])]))
    with pytest.raises(AssertionError):
        assert_tables_render("| a | b |\n|---|---|\n| |grad L| | 1 |")


def test_a_long_table_goes_to_a_linked_csv_and_a_short_one_stays(tmp_path):
    from nets.experiments.analysis import REPORT_ROWS, Context

    ctx = Context("x", tmp_path, "smoke", None, [])
    ctx.table("Short", ["a", "|b|"], [[1, 2]] * REPORT_ROWS)
    ctx.table("Per direction: long", ["a", "|b|"], [[i, "x|y"] for i in range(REPORT_ROWS + 1)], name="per-direction")
    assert ctx.tables[0].count("\n| ") == REPORT_ROWS + 1
    assert "[`table-per-direction.csv`](table-per-direction.csv)" in ctx.tables[1] and "| 0 |" not in ctx.tables[1]
    rows = list(csv.reader(open(tmp_path / "table-per-direction.csv")))
    assert rows[0] == ["a", "|b|"] and rows[-1] == [str(REPORT_ROWS), "x|y"] and len(rows) == REPORT_ROWS + 2


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_scale_end_to_end(name, tmp_path, capsys):
    out = tmp_path / name
    assert dispatch.main([name, "--scale", "smoke", "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    for f in OUTPUTS:
        assert (out / f).stat().st_size > 0, f
    assert list(out.glob("*.png")), "no figure"
    report = (out / "report.md").read_text()
    # A headline of at most five lines (claim, setting and seeds, verdict), then the figure and the claims table.
    head = report.split("\n\n")[1].splitlines()
    assert len(head) <= 5 and head[0].startswith("**Claim.**") and head[-1].startswith("**Verdict: ")
    assert head[-1].split("**")[1] in ("Verdict: agrees", "Verdict: disagrees", "Verdict: not settled")
    assert report.index("![") < report.index("| part of the claim | measured | agrees |") < report.index("## Details")
    assert_tables_render(report)
    for link in re.findall(r"\]\(([^)]+)\)", report):  # every linked figure and CSV table is there
        assert (out / link).is_file(), link
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert rows and all("error" not in r or not r["error"] for r in rows)
    printed = capsys.readouterr().out
    assert "runs finished" in printed and re.search(r"\[(agrees|DISAGREES|not settled)\]", printed)
    # Published into docs/results: the copy's links resolve, and the index row repeats the report's verdict.
    from devtools.publish_results import main as publish

    docs = tmp_path / "docs"
    docs.mkdir()
    assert publish([str(out), "--docs", str(docs)]) == 0
    copy = (docs / f"{name}-smoke.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", copy):
        assert (docs / link).is_file(), link
    verdict = re.search(r"^\*\*Verdict: (.*)$", copy, flags=re.M).group(1).replace("**", "")
    index = (docs / "README.md").read_text()
    assert verdict.replace("|", "\\|") in index  # word for word, as a table cell
    # The index's head states the seeds behind every verdict, naming a report of fewer than three.
    seeds = len(re.search(r"; seeds ([^.]*)\.", copy).group(1).split(","))
    assert (f"except {name}-smoke ({seeds})" in index) == (seeds < 3), index[:1200]


def test_finished_runs_are_skipped_and_failures_reported(tmp_path):
    args = build_parser("fig2", fig2.__doc__).parse_args(["--device", "cpu"])
    specs = fig2.specs("smoke", args)[:2]
    logs = []
    first = sweep.run_sweep(specs, tmp_path, progress=False, log=logs.append)
    assert all("error" not in r for r in first)
    # A run that cannot train (batch larger than the data) fails alone; the finished ones are read back.
    bad = sweep.RunSpec(base_config("smoke", args).__class__(**{**specs[0].train.__dict__, "batch_size": 10**6}),
                          tags={"run": "bad", "seed": 0})
    second = sweep.run_sweep(specs + [bad], tmp_path, progress=False, log=logs.append)
    assert second[:2] == first and "batch_size must be <=" in second[2]["error"]
    assert any("1 of 3 runs failed" in m for m in logs) and any("2 finished already" in m for m in logs)
    metrics = json.loads((tmp_path / "runs" / specs[0].key() / "metrics.json").read_text())
    assert metrics.pop("sgd_noise")["kind"] == "nets.experiments.metrics" and metrics == first[0]


def test_bad_experiment_input(tmp_path, capsys):
    assert dispatch.main(["fig9"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert fig3.main(["--workers", "0", "--out", str(tmp_path)]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_executor_runs_a_smoke_sweep(tmp_path):
    pytest.importorskip("ray")
    args = build_parser("fig2", fig2.__doc__).parse_args(["--device", "cpu"])
    specs = fig2.specs("smoke", args)
    res = sweep.run_sweep(specs, tmp_path, executor="ray", progress=False, log=lambda m: None)
    assert len(res) == len(specs) and all("error" not in r for r in res)
    assert all((tmp_path / "runs" / s.key() / "metrics.json").is_file() for s in specs)


def test_fig5_judges_invariance_and_breaks_by_the_seeds_scatter():
    """Equal accuracies at beta <= 4 are invariant ("yes", settled by three tight seeds); a drop far beyond the
    tolerance settles a break; one seed settles nothing; a diverged seed breaks outright."""
    from sgd_noise_common.stats import Comparison

    st = fig5.SETTINGS["small"]  # tol 0.02

    def cells(accs, diverged=()):
        return {(100, b): {"max_acc": list(a), "diverged": int(b in diverged), "curves": [], "lam": []}
                for b, a in accs.items()}

    tight = {1: (0.86, 0.861, 0.859), 2: (0.861, 0.86, 0.862), 4: (0.859, 0.86, 0.861), 8: (0.70, 0.71, 0.69)}
    breaks, inv = fig5.beta_breaks(cells(tight), st.tol)
    assert inv[100].holds and inv[100].settled
    assert breaks[100] == (8.0, True, True)
    shifted = {**tight, 4: (0.80, 0.801, 0.799)}  # beta = 4 drops by 0.06: not invariant, and settled so
    breaks, inv = fig5.beta_breaks(cells(shifted), st.tol)
    assert not inv[100].holds and inv[100].settled and breaks[100][0] == 4.0
    one = {b: a[:1] for b, a in tight.items()}  # a single seed: no scatter, nothing settled
    breaks, inv = fig5.beta_breaks(cells(one), st.tol)
    assert inv[100].holds and not inv[100].settled and breaks[100] == (8.0, False, False)
    breaks, inv = fig5.beta_breaks(cells(tight, diverged=(2,)), st.tol)
    assert inv[100] == Comparison(holds=False, settled=True, low=inv[100].low, high=inv[100].high)
    assert breaks[100][:2] == (2.0, True)


def test_a_panel_with_fewer_seeds_is_named_in_the_headline_and_counted_by_the_index():
    """Old fig2 small ran one ResNet56 seed beside two VGG11 seeds: the setting line names the panel, and the index
    counts the fewest seeds of any panel."""
    from types import SimpleNamespace

    from devtools.publish_results import fewest_seeds
    from nets.experiments.cli import headline
    from nets.train import TrainConfig

    cfg = TrainConfig(dataset="synthetic-mnist", model="mlp", width=0.125, epochs=1, synthetic_size=256)
    specs = [sweep.RunSpec(cfg, tags=dict(panel="resnet56", seed=0))]
    specs += [sweep.RunSpec(cfg, tags=dict(panel="vgg11", seed=s)) for s in (0, 1)]
    module = SimpleNamespace(NAME="figX", CLAIM="a claim")
    setting = headline(module, "small", specs, [])[1]
    assert setting.endswith("; seeds 0, 1 (resnet56: 0).")
    assert fewest_seeds("0, 1 (resnet56: 0)") == 1 and fewest_seeds("0, 1, 2") == 3
    assert fewest_seeds("0, 1, 2 (resnet56: different eta/S: 0, 1)") == 2
    assert headline(module, "small", specs[1:], [])[1].endswith("; seeds 0, 1.")
