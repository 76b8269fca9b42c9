"""Copy finished experiment reports into ``docs/results`` and rebuild its index from their headlines.

    python -m devtools.publish_results OUT_DIR [OUT_DIR ...] [--docs docs/results] [--note NAME=TEXT]

Each ``OUT_DIR`` is a folder written by ``python -m nets.experiments NAME --out OUT_DIR``. Its ``report.md``, figures
and long tables (``table-*.csv``) are copied as ``NAME-SCALE.md``, ``NAME-SCALE.png`` and
``NAME-SCALE-table-*.csv``, the report's links rewritten to the new names. The index (``README.md``) is then
rebuilt from every report in the folder: one row per report with its verdict line and setting line copied word for
word from the report's headline, so the index never states more than the report does. ``--note NAME=TEXT`` adds a
remark to a report's row (e.g. that the machine was shared while it ran).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

INDEX_HEAD = """# Experiment results (2-core CPU development VM, real Fashion-MNIST)

Each report was made with `python -m nets.experiments NAME --scale small --device cpu --out OUT` and copied here by
`python -m devtools.publish_results OUT ...`, which also writes this index: each row's verdict and setting are the
report's own headline, word for word. At this scale runs last a few epochs, so read them as what this toolkit measures
quickly, not as the paper's 200-epoch results. A verdict is "not settled" where the scatter between seeds leaves a part
of the claim undecided, or where fewer than 90 % of 200 bootstrap resamples of the seeds repeat it (its margin, in
each headline).

Every verdict comes from {seeds}.

| experiment | verdict (the report's headline) | setting | the runs' own time | report |
|---|---|---|---|---|
"""


def _headline(report: str) -> dict:
    """The headline fields of a report: ``claim``, ``setting``, ``verdict`` (the lines that open it) and ``time``."""
    out = {}
    for key, label in (("claim", "Claim."), ("setting", "Setting."), ("verdict", "Verdict:")):
        m = re.search(rf"^\*\*{re.escape(label)}(.*)$", report, flags=re.M)
        if m is None:
            raise ValueError(f"the report has no '**{label}' headline line (an older report format?)")
        out[key] = (label + m.group(1)).replace("**", "").strip()
    # The runs' own time (every session that trained them), not the wall time of the invocation that wrote the
    # report, which may only have re-read finished runs.
    m = re.search(r"^\*\*Time\.\*\*.*?: (training [^.]*)\.", report, flags=re.M)
    out["time"] = m.group(1).strip() if m else ""
    return out


def publish(out_dir: Path, docs: Path) -> str:
    """Copy one experiment folder's report, figures and tables into ``docs``; returns the report's new name."""
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    stem = f"{config['experiment']}-{config['scale']}"
    report = (out_dir / "report.md").read_text(encoding="utf-8")
    _headline(report)  # refuse a report without a headline before copying anything
    renames = {p.name: f"{stem}{p.suffix}" if p.suffix == ".png" and p.stem == config["experiment"]
               else f"{stem}-{p.name}" for p in [*out_dir.glob("*.png"), *out_dir.glob("table-*.csv")]}
    for old, new in renames.items():
        shutil.copyfile(out_dir / old, docs / new)
        report = report.replace(f"]({old})", f"]({new})")
    (docs / f"{stem}.md").write_text(report, encoding="utf-8")
    return f"{stem}.md"


def fewest_seeds(text: str) -> int:
    """The fewest seeds of any panel in a report's seeds text: ``0, 1, 2`` is 3; ``0, 1, 2 (resnet56: 0)`` is 1
    (``nets.experiments.cli.headline`` names a panel with fewer seeds in parentheses)."""
    main, _, rest = text.partition(" (")
    counts = [len(main.split(","))]
    for part in rest.removesuffix(")").split("; ") if rest else []:
        counts.append(len(part.rsplit(": ", 1)[-1].split(",")))
    return min(counts)


def index(docs: Path, notes: dict[str, str]) -> str:
    """The index of every report in ``docs`` that has a headline (others are listed as earlier reports)."""
    rows, earlier, few = [], [], []
    for path in sorted(docs.glob("*.md")):
        if path.name == "README.md":
            continue
        text = path.read_text(encoding="utf-8")
        try:
            h = _headline(text)
        except ValueError:
            earlier.append(path)
            continue
        seeds = re.search(r"; seeds (.*?)\.?$", h["setting"])
        count = fewest_seeds(seeds.group(1)) if seeds else 0
        if count < 3:  # the index says so in its head: a verdict of fewer seeds is not what it promises
            few.append(f"{path.stem} ({count or 'unrecorded'})")
        note = notes.get(path.stem, "")
        cells = [path.stem, h["verdict"], h["setting"].removeprefix("Setting. "), h["time"] + (f"; {note}" if note
                                                                                                else ""),
                 f"[{path.stem}]({path.name})"]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    seeds = "three seeds" + (f" or more, except {', '.join(few)}" if few else " or more")
    text = INDEX_HEAD.format(seeds=seeds) + "\n".join(rows) + "\n"
    if earlier:
        text += ("\nEarlier reports, in the format of the toolkit version that made them (not regenerated; kept as "
                 "findings, their 'agrees' columns are not verdicts: they predate the three seeds and the verdict "
                 "margins of issue 22): "
                 + ", ".join(f"[{p.stem}]({p.name})" for p in earlier) + ".\n")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.publish_results", description=__doc__.splitlines()[0])
    p.add_argument("out_dirs", nargs="*", type=Path, help="experiment output folders to copy")
    p.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results")
    p.add_argument("--note", action="append", default=[], metavar="NAME=TEXT",
                   help="a remark for report NAME's row in the index")
    args = p.parse_args(argv)
    notes = dict(n.split("=", 1) for n in args.note if "=" in n)
    for d in args.out_dirs:
        if not (d / "report.md").is_file() or not (d / "config.json").is_file():
            print(f"error: {d} is not a finished experiment folder (no report.md or config.json)", file=sys.stderr)
            return 2
    for d in args.out_dirs:
        print(f"{d} -> {args.docs / publish(d, args.docs)}")
    (args.docs / "README.md").write_text(index(args.docs, notes), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
