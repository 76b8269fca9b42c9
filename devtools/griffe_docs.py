"""A griffe extension for the API pages that ``make docs`` builds (``mkdocs.yml`` loads it).

Two things, both at documentation-build time only (the sources are not touched):

* Doctests written in a docstring's description (``>>> ...`` at the margin, as ``pytest --doctest-modules`` runs
  them) are fenced as ``pycon`` code. Markdown would otherwise run them into the paragraph and read
  ``x["a"]["b"]`` as a reference link. Doctests inside a Google ``Example:`` section are indented and left to griffe.
* ``quiet``: objects whose docstrings griffe cannot parse cleanly and whose modules are being edited by someone
  else; their parse warnings are switched off one object at a time, not project-wide. Each entry in
  ``mkdocs.yml`` names the docstring to fix; remove it once fixed.
"""

from __future__ import annotations

from typing import Any

import griffe

__all__ = ["DocsExtension", "fence_doctests"]


def fence_doctests(text: str) -> str:
    """``text`` with each run of doctest lines at the margin (a ``>>>`` line, its continuations and its output, up
    to a blank line) inside a ``pycon`` code fence; text already inside a fence is left alone."""
    out: list[str] = []
    in_fence = in_doctest = False
    for line in text.splitlines():
        if in_doctest and not line.strip():
            out.append("```")
            in_doctest = False
        elif not in_doctest and not in_fence and line.startswith(">>>"):
            out.append("```pycon")
            in_doctest = True
        elif not in_doctest and line.lstrip().startswith("```"):
            in_fence = not in_fence
        out.append(line)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class DocsExtension(griffe.Extension):
    """Fences description doctests; silences the parse warnings of the docstrings named in ``quiet``."""

    def __init__(self, quiet: list[str] | None = None) -> None:
        super().__init__()
        self.quiet = set(quiet or ())

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring before it is parsed (parsing is lazy, at rendering)."""
        docstring = obj.docstring
        if docstring is None:
            return
        if ">>>" in docstring.value:
            docstring.value = fence_doctests(docstring.value)
        if obj.path in self.quiet:
            docstring.parser_options = {**docstring.parser_options, "warnings": False}
