# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint docs venv clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when pyproject.toml changed (the stamp carries its checksum). --no-compile:
# byte-compiling every installed module (torch's thousands) took ~40 s of a fresh install;
# Python compiles the few it imports on first use.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --no-compile -e ".[test,dicom,docs]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# The paper's study end to end at small scale (minutes on 2 CPU cores): skddh_out/report.md
demo: $(STAMP)
	$(PY) -m skddh reproduce --scale small --out skddh_out

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Sphinx with every gallery tutorial executed; warnings are errors.
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

test: lint
	$(PY) -m pytest
	$(MAKE) docs

bench: $(STAMP)
	$(PY) benchmarks/bench_cohort.py
	$(PY) benchmarks/bench_policy_search.py
	$(PY) benchmarks/bench_learning.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache skddh_out docs/_build docs/auto_examples docs/generated
