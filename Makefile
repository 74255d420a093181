# Two-command quickstart: `make run` and `make test`. Each creates .venv if missing and installs
# mmsim with the versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINTED := mmsim tests scripts

.PHONY: run test test-fast lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m mmsim.run experiment=cascade_stress

# The suite on every core (at most 4 workers: each holds its own compiled programs, ~4 GB).
PYTEST_WORKERS := -n auto --maxprocesses 4

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_WORKERS)

test-fast: $(STAMP)           # without the large Monte Carlo tests (marked slow)
	$(PY) -m pytest -q $(PYTEST_WORKERS) -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

format: $(STAMP)
	$(PY) -m ruff check --fix $(LINTED)
	$(PY) -m ruff format $(LINTED)

bench: $(STAMP)
	$(PY) scripts/bench_processes.py
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) outputs multirun
