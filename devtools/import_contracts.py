"""An import-linter contract type: no module imports another module's private names.

import-linter's own contracts see which module imports which; they do not see *what* is imported. This one reads
every module of the root packages (their ``ast``, no code is run) and reports each import of a name whose last
private component (a segment starting with one underscore, not a dunder) is used outside its owner:

* a private **module** (``sde._kernels``) may be imported only from inside the package that holds it (``sde.*``);
* a private **name** in a module (``nets.curvature._batches``) may be used only inside that module.

Configured in ``pyproject.toml`` as ``type = "private_names"``; tests import private names freely and are not
checked (they are not in the root packages).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from importlinter import Contract, ContractCheck, output

__all__ = ["NoPrivateImportsContract", "private_import_violations"]


def _is_private(segment: str) -> bool:
    return segment.startswith("_") and not (segment.startswith("__") and segment.endswith("__"))


def _module_files(root: str) -> dict[str, Path]:
    spec = importlib.util.find_spec(root)  # a top-level spec: locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{root} is not an importable package")
    base = Path(list(spec.submodule_search_locations)[0])
    files = {}
    for path in base.rglob("*.py"):
        parts = path.relative_to(base.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer if is_package else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _owner_violation(importer: str, target: str, modules: set[str]) -> str | None:
    """Why importing the dotted ``target`` from ``importer`` breaks the rule, or ``None``."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if not _is_private(parts[i]):
            continue
        owner = ".".join(parts[:i])
        if ".".join(parts[:i + 1]) in modules:  # a private module: only its own package may import it
            if importer != owner and not importer.startswith(owner + "."):
                return f"private module {'.'.join(parts[:i + 1])} imported from outside {owner}"
        elif importer != owner:  # a private name: only its own module may use it
            return f"private name {parts[i]} of {owner}"
        return None
    return None


def private_import_violations(roots) -> list[tuple[str, int, str]]:
    """``(module, line, reason)`` for every import of another module's private name in the packages ``roots``."""
    files: dict[str, Path] = {}
    for root in roots:
        files.update(_module_files(root))
    modules = set(files)
    found = []
    for importer, path in sorted(files.items()):
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                base = _resolve(importer, is_package, node)
                targets = [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] not in roots:
                    continue
                reason = _owner_violation(importer, target, modules)
                if reason:
                    found.append((importer, node.lineno, reason))
    return found


class NoPrivateImportsContract(Contract):
    """No module of the root packages imports another module's private names (see the module docstring)."""

    def check(self, graph, verbose: bool) -> ContractCheck:
        """Kept when no violation is found in the root packages of the graph."""
        roots = sorted({m.split(".")[0] for m in graph.modules if not graph.is_module_squashed(m)} &
                       set(self.session_options.get("root_packages", []) or
                           [self.session_options.get("root_package")]))
        found = private_import_violations(roots)
        return ContractCheck(kept=not found, metadata={"violations": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        """One line per violation: module, line and what it imports."""
        for module, line, reason in check.metadata["violations"]:
            output.print_error(f"{module}:{line}: imports the {reason}")
            output.new_line()
