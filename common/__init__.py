"""The bottom layer that every other package may use: input validation (``validate``), atomic file writes and
output-path checks (``files``), the record of the machine and versions a result came from (``environment``),
the command-line parser with one-line errors (``cli``) and the model of a tested claim (``claims``).

It knows nothing of SGD: the mathematics lives in ``quadratic`` ← ``sde`` ← ``nets``, and the checks and
experiments on top of them.
"""

from common import claims, cli, environment, files, validate

__all__ = ["claims", "cli", "environment", "files", "validate"]
