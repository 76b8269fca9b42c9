"""``python -m nets.experiments NAME [options]``: run one experiment (``NAME`` one of fig1 ... fig5, eq7), or
``all`` to run every experiment at the chosen scale one after the other. Options as for each experiment
(``python -m nets.experiments.fig3 --help``); with ``all``, ``--out DIR`` holds one folder per experiment
(``DIR/fig3``, ...) and ``--plan --json PATH`` writes one plan per experiment (``PATH-fig3.json``, ...)."""

import importlib
import sys
from pathlib import Path

from nets.experiments import EXPERIMENTS


def _for_one(name: str, argv: list[str]) -> list[str]:
    """The arguments of ``all`` for experiment ``name``: ``--out DIR`` becomes ``DIR/<name>`` and ``--json PATH``
    becomes ``PATH`` with ``-<name>`` before its suffix, so that no experiment writes over another's files.

    >>> _for_one("fig3", ["--out", "x", "--plan", "--json=p.json"])
    ['--out', 'x/fig3', '--plan', '--json=p-fig3.json']
    """
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        for option, rename in (("--out", lambda v: str(Path(v) / name)),
                               ("--json", lambda v: str(Path(v).with_name(f"{Path(v).stem}-{name}{Path(v).suffix}")))):
            if arg == option and i + 1 < len(argv):
                out += [arg, rename(argv[i + 1])]
                i += 2
                break
            if arg.startswith(option + "="):
                out.append(f"{option}={rename(arg.split('=', 1)[1])}")
                i += 1
                break
        else:
            out.append(arg)
            i += 1
    return out


def main(argv=None) -> int:
    """Dispatch to one experiment's ``main`` (or every one's, for ``all``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        codes = [importlib.import_module(f"nets.experiments.{n}").main(_for_one(n, rest)) for n in EXPERIMENTS]
        return max(codes)
    if name not in EXPERIMENTS:
        print(f"python -m nets.experiments: error: unknown experiment {name!r}; choose from "
              f"{', '.join(EXPERIMENTS)} or all", file=sys.stderr)
        return 2
    return importlib.import_module(f"nets.experiments.{name}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
