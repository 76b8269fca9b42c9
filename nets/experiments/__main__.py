"""``python -m nets.experiments NAME [options]``: run one experiment (``NAME`` one of fig1 ... fig5, eq7), or
``all`` to run every experiment at the chosen scale one after the other. Options as for each experiment
(``python -m nets.experiments.fig3 --help``)."""

import importlib
import sys

from nets.experiments import EXPERIMENTS


def main(argv=None) -> int:
    """Dispatch to one experiment's ``main`` (or every one's, for ``all``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        codes = [importlib.import_module(f"nets.experiments.{n}").main(rest) for n in EXPERIMENTS]
        return max(codes)
    if name not in EXPERIMENTS:
        print(f"python -m nets.experiments: error: unknown experiment {name!r}; choose from "
              f"{', '.join(EXPERIMENTS)} or all", file=sys.stderr)
        return 2
    return importlib.import_module(f"nets.experiments.{name}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
