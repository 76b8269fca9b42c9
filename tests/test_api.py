"""Every public name listed in ``__all__`` exists (a missing comma once merged two names in sympy), in every
module of every package, found by walking the packages rather than from a list that a new module could miss."""

import importlib
import importlib.util
import pkgutil

import pytest

PACKAGES = ["sgd_noise_common", "quadratic", "sde", "verification", "nets"]


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        if package == "nets" and importlib.util.find_spec("torch") is None:
            continue
        mod = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(mod.__path__, prefix=f"{package}.")
                  if not info.name.rsplit(".", 1)[-1].startswith("_") or info.name.endswith("__main__")]
    return names


MODULES = _modules()


def test_the_walk_finds_the_modules():
    assert {"sde.theory", "verification.ou_check", "sgd_noise_common.lock"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    mod = importlib.import_module(name)
    for attr in getattr(mod, "__all__", []):
        assert hasattr(mod, attr), f"{name}.__all__ lists {attr!r}, which does not exist"


def test_theory_imports_without_torch():
    import subprocess
    import sys

    # The theory must not load torch (scipy merely looks into sys.modules for it, so block imports instead).
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import sde, quadratic, sde.diagnostics\n"
            "import verification.ou_check, verification.invariance, verification.breakdown, verification.fdr\n"
            "import verification.noise_scale, verification.derive, verification.__main__\n"
            "assert 'torch' not in sys.modules\n"
            "try:\n    import nets\nexcept ImportError as e:\n    print('ok', e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # The theory runs without torch; nets says what it needs.
    assert out.stdout.startswith("ok") and "pip install torch==2.13.0" in out.stdout


def _public_callables(mod):
    for attr in getattr(mod, "__all__", []):
        obj = getattr(mod, attr)
        yield f"{mod.__name__}.{attr}", obj
        if isinstance(obj, type):
            for name, member in vars(obj).items():
                if not name.startswith("_") and callable(getattr(obj, name, None)):
                    yield f"{mod.__name__}.{attr}.{name}", getattr(obj, name)


def test_randomness_is_a_keyword_and_never_fresh_entropy():
    """The randomness policy: every public function that draws takes its ``rng`` (or ``seed``) by keyword, and none
    of them falls back to fresh entropy. ``validate.generator`` refuses ``None``; a default ``None`` is allowed only
    where nothing is drawn without it (a rotation, a simulation asked for)."""
    import inspect

    from sgd_noise_common.validate import generator

    with pytest.raises(ValueError, match="rng is required"):
        generator("rng", None)
    positional = []
    for name in MODULES:
        mod = importlib.import_module(name)
        for qual, obj in _public_callables(mod):
            try:
                sig = inspect.signature(obj)
            except (TypeError, ValueError):
                continue
            p = sig.parameters.get("rng")
            if p is not None and p.kind is not p.KEYWORD_ONLY and qual != "sgd_noise_common.validate.generator":
                positional.append(qual)
    assert not positional, positional
