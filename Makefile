# Set-up and entry points. Every target creates (or reuses) the virtual environment in .venv first.
# torch==2.13.0 is installed before the package so that pip takes the CPU wheel instead of a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= results/bbbc021

.PHONY: install test test-all run lint docs

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# Two test tiers: `make test` skips the tests marked slow (training, the report, the notebooks) and takes about two
# minutes; `make test-all` runs the whole suite, as continuous integration does.
test: install lint
	$(PY) -m pytest

test-all: install lint
	$(PY) -m pytest --runslow

run: install
	$(VENV)/bin/cpembed run --out $(OUT)

# Documentation: the doc extra on top of the test set-up, then Sphinx with warnings as errors.
$(VENV)/.doc-installed: $(VENV)/.installed
	$(PY) -m pip install -e ".[doc]"
	touch $@

docs: $(VENV)/.doc-installed
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html
