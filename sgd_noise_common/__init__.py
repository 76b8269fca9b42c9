"""The bottom layer that every other package may use: input validation (``validate``), atomic file writes and
output-path checks (``files``), one writer per output folder (``lock``), the record of the machine and versions a
result came from (``environment``), the command-line parser with one-line errors (``cli``), independent random
streams from one seed (``seeds``), critical values and verdicts from standard errors (``stats``) and the model of a
tested claim (``claims``).

Its name is specific on purpose: a user's script that sits beside its own ``common.py`` would shadow a top-level
package called ``common``, and every import of the toolkit would then fail.

It knows nothing of SGD: the mathematics lives in ``quadratic`` ← ``sde`` ← ``nets``, and the checks and
experiments on top of them.
"""

from sgd_noise_common import claims, cli, environment, files, lock, seeds, validate

__all__ = ["claims", "cli", "environment", "files", "lock", "seeds", "validate"]
