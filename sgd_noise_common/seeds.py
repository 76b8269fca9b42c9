"""Independent random streams from one seed, split by ``numpy.random.SeedSequence.spawn`` (``../STYLE.md`` §5).

A result is reproducible from its seed, and the streams it uses inside (the batches, the examples measured, the
probes) must not overlap: a seed plus 7 for one stream and plus 8 for another gives the neighbouring seed's
streams to the next run. ``SeedSequence`` hashes its entropy and spawn key into well-separated states, so the
children of one seed are independent of each other and of every other seed's children.

Each user names its streams in a fixed tuple; the *i*-th name always gets the *i*-th child, so a stream added at the
end of a tuple leaves the others' numbers unchanged.
"""

from __future__ import annotations

import numpy as np

__all__ = ["spawn_seeds", "MAX_CHILD_SEED"]

#: Child seeds lie in [0, 2**63): accepted by ``torch.Generator.manual_seed``, ``numpy.random.default_rng`` and
#: ``SeedSequence`` alike.
MAX_CHILD_SEED = 2**63 - 1


def spawn_seeds(seed, names) -> dict[str, int]:
    """One integer seed per name, from the children of ``SeedSequence(seed)``.

    Args:
        seed: a non-negative integer, or a sequence of them (e.g. ``(run_seed, stage_seed)``: the entropy of the
            parent sequence, so that two seeds combine without collisions such as 1 + 2 = 2 + 1).
        names: the streams' names, in a fixed order (the *i*-th name gets the *i*-th child).

    Returns:
        ``{name: seed}`` with each seed in [0, 2**63).

    >>> s = spawn_seeds(0, ("batches", "probes"))
    >>> s["batches"] != s["probes"]
    True
    >>> spawn_seeds(0, ("batches", "probes", "directions"))["probes"] == s["probes"]  # adding a stream moves none
    True
    """
    names = tuple(names)
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct, got {names}")
    entropy = [seed] if np.ndim(seed) == 0 else list(seed)
    for s in entropy:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"seed must be a non-negative integer or a sequence of them, got {seed!r}")
    children = np.random.SeedSequence([int(s) for s in entropy]).spawn(len(names))
    return {name: int(child.generate_state(1, np.uint64)[0] >> np.uint64(1)) for name, child in zip(names, children)}
