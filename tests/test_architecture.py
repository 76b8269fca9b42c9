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
    for pkg in ("sgd_noise_common", "quadratic", "sde", "nets"):
        for path in (ROOT / pkg).rglob("*.py"):
            if "experiments" in path.parts:
                continue
            text = path.read_text()
            if "import verification" in text or "from verification" in text or "nets.experiments" in text:
                bad.append(str(path.relative_to(ROOT)))
    assert bad == []


def test_a_users_common_py_does_not_shadow_the_toolkit(tmp_path):
    """A script beside its own ``common.py`` (a common name) still imports every package of the toolkit."""
    (tmp_path / "common.py").write_text("raise ImportError('the user\\'s own common.py was imported')\n")
    (tmp_path / "validate.py").write_text("raise ImportError('the user\\'s own validate.py was imported')\n")
    (tmp_path / "script.py").write_text(
        "import quadratic, sde, verification.ou_check, verification.__main__\n"
        "from sgd_noise_common.files import atomic_write\n"
        "from quadratic import Quadratic, logspace\n"
        "from sde import expected_loss\n"
        "print(round(expected_loss(Quadratic.from_spectrum(logspace(0.01, 1.0, 10)), 0.1, 10), 6))\n")
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    if subprocess.run([sys.executable, "-c", code]).returncode == 0:
        with open(tmp_path / "script.py", "a") as fh:
            fh.write("import nets.train, nets.measure, nets.experiments.cli\n")
    out = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) > 0
