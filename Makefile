# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint docs docs-inventories venv clean bench gpu-check

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

# The paper's study end to end at small scale (about 15 minutes on 2 CPU cores): skddh_out/report.md
demo: $(STAMP)
	$(PY) -m skddh reproduce --scale small --out skddh_out

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Sphinx with every gallery tutorial executed; warnings are errors. Then the built site is
# checked as a reader offline would see it: links and anchors, thumbnails, raw LaTeX.
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	$(PY) docs/check_site.py docs/_build/html

# Where there is a network: fetch the intersphinx inventories into docs/_intersphinx/ (then
# `make docs` links into python/numpy/scipy/pandas/scikit-learn/torch offline; docs/conf.py).
docs-inventories: $(STAMP)
	$(PY) -c "import pathlib, sys, urllib.request; sys.path.insert(0, 'docs'); \
	from conf import INTERSPHINX_URLS; d = pathlib.Path('docs/_intersphinx'); d.mkdir(exist_ok=True); \
	[urllib.request.urlretrieve(u + '/objects.inv', d / (n + '.inv')) for n, u in INTERSPHINX_URLS.items()]"

test: lint
	$(PY) -m pytest
	$(MAKE) docs

bench: $(STAMP)
	$(PY) benchmarks/bench_cohort.py
	$(PY) benchmarks/bench_policy_search.py
	$(PY) benchmarks/bench_learning.py

# On a CUDA machine: the tests marked gpu, the SimSiam benchmark and the paper-scale study,
# timed, in one table against the targets of issue 15. Without CUDA: exits 2, one line.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache skddh_out docs/_build docs/auto_examples docs/generated
