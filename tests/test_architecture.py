"""The architecture as tests: import-linter's contracts in pyproject.toml hold, and the contract against private
imports finds what it must."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.import_contracts import private_import_violations

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed: pip install -e '.[test]'")
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "broken" not in done.stdout.lower().replace("0 broken", "")


def _package(tmp_path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_private_imports_are_found(tmp_path, monkeypatch):
    _package(tmp_path, {
        "pkga/__init__.py": "",
        "pkga/_impl.py": "def helper():\n    pass\n\ndef _secret():\n    pass\n",
        "pkga/api.py": "from pkga._impl import helper\nfrom pkga import _impl\nfrom ._impl import helper as h\n",
        "pkga/bad.py": "from pkga.api import _hidden\n",
        "pkgb/__init__.py": "",
        "pkgb/user.py": "from pkga._impl import helper\nimport pkga._impl\nfrom pkga._impl import (\n    helper,\n"
                        "    _secret,\n)\n",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    found = private_import_violations(["pkga", "pkgb"])
    lines = sorted((module, line) for module, line, _ in found)
    # pkga may use its own private module; another module's private name (api._hidden) is not allowed; pkgb may
    # touch neither pkga._impl nor pkga._impl._secret (line 3: both names of the multi-line import).
    assert lines == [("pkga.bad", 1), ("pkgb.user", 1), ("pkgb.user", 2), ("pkgb.user", 3), ("pkgb.user", 3)]
    assert all("pkga._impl" in reason for module, _, reason in found if module == "pkgb.user")


def test_the_library_does_not_import_the_checks_or_experiments():
    # The same rule as the layers contract, read off the source without import-linter, so a broken contract
    # configuration cannot hide an upward import.
    bad = []
    for pkg in ("common", "quadratic", "sde", "nets"):
        for path in (ROOT / pkg).rglob("*.py"):
            if "experiments" in path.parts:
                continue
            text = path.read_text()
            if "import verification" in text or "from verification" in text or "nets.experiments" in text:
                bad.append(str(path.relative_to(ROOT)))
    assert bad == []
