# Each target is self-contained: it creates or updates the local venv from pyproject.toml first.
#   make demo       all six stages on the bundled sample (offline, CPU, a few minutes)
#   make test       lint + the test suite (slow tests: make test-slow)
#   make reproduce  the paper run: `dvc repro` with params.yaml as committed (GPU recommended)
#   make mlflow-ui  the MLflow UI on the repository's store, http://127.0.0.1:5000
#   make bench      benchmarks (writes benchmarks/results.json)
#   make ablation   the ablation grid of params.yaml as queued DVC experiments, then its report
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev,cpu
PY := $(VENV)/bin/python
# Stages run as `python -m stages.<name>` (dvc.yaml): the venv's python must come first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
MLFLOW_PORT ?= 5000

.PHONY: install demo test test-slow lint reproduce mlflow-ui bench ablation clean-venv

install: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

demo: install
	$(PY) -m pneumonia demo

lint: install
	$(VENV)/bin/ruff check pneumonia stages tests benchmarks

test: install lint
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

reproduce: install
	dvc repro

mlflow-ui: install
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui \
		--backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
		--host 127.0.0.1 --port $(MLFLOW_PORT)

ablation: install
	$(PY) -m pneumonia ablation

bench: install
	$(PY) -m benchmarks.run

clean-venv:
	rm -rf $(VENV)
