# Two entry points, each doing its own set-up in .venv: `make check` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup check test test-quick verify bench docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 first: it is the CPU build on this machine's disk; unpinned, pip would fetch a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,torch,ray,docs]'
	# curvlinops, the independent reference for the curvature tests, pinned; --no-deps because its dependency
	# BackPACK asks for torchvision, which would replace the CPU torch with a multi-GB CUDA build.
	$(PY) -m pip install --quiet --no-deps curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einconv==0.1.0
	$(PY) -m pip install --quiet einops==0.8.2 opt-einsum==3.4.0 linear-operator==0.6.1
	touch $@

check: setup
	$(PY) -m verification.ou_check

test: setup
	$(PY) -m pytest

# The suite without the tests marked slow (long statistical and end-to-end ones), for the edit-test loop; CI runs all.
test-quick: setup
	$(PY) -m pytest -m "not slow"

verify: setup
	$(PY) -m verification --out verification-report

bench: setup
	$(PY) benchmarks/simulate_speed.py

# The documentation site with the API reference from the docstrings, into site/ (mkdocs.yml); any warning fails it.
docs: setup
	$(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis site
	find . -name __pycache__ -prune -exec rm -rf {} +
