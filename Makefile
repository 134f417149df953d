# Each target is self-contained: it creates or updates the local venv from the lock file
# (uv.lock: every package of every extra, pinned with hashes) first.
# The targets, one table: docs/layout.md ("Make targets"); tests/test_docs.py checks it.
#   make lock       re-lock after editing pyproject.toml's pins (make lock-upgrade: newest allowed)
#   make demo       all six stages on the bundled sample (offline, CPU, a few minutes)
#   make test       lint + the test suite (slow tests: make test-slow)
#   make reproduce  the paper run: `dvc repro` with params.yaml as committed (GPU recommended)
#   make mlflow-ui  the MLflow UI on the repository's store, http://127.0.0.1:5001 (UI_PORT)
#   make bench      benchmarks (writes benchmarks/results.json)
#   make runs       the experiments side by side: headline metrics and changed params, best on validation first
#   make ablation   the ablation grid of params.yaml as queued DVC experiments, then its report
#   make mlflow-server  local S3 API + PostgreSQL + MLflow server on MLFLOW_PORT 5000 (docs/team.md)
#   make push / make pull  dvc push / pull with a clear message when the remote fails
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= dev,cpu,team
PY := $(VENV)/bin/python
# Stages run as `python -m stages.<name>` (dvc.yaml): the venv's python must come first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
MLFLOW_PORT ?= 5000
# The UI's own port: the team's tracking server (mlflow-server) keeps 5000 while the UI runs.
UI_PORT ?= 5001
# uv installs from uv.lock; it is bootstrapped once, pinned, into its own small venv (.uv/).
# Keep UV_VERSION equal to pyproject.toml's [tool.uv] required-version.
UV_VERSION := 0.13.9
UV := .uv/bin/uv
# uv never downloads a Python of its own here: it uses $(PYTHON) (or the venv's).
export UV_PYTHON_DOWNLOADS := never
comma := ,
UV_EXTRAS = $(foreach extra,$(subst $(comma), ,$(EXTRAS)),--extra $(extra))

.PHONY: install demo test test-slow lint reproduce mlflow-ui bench ablation clean-venv \
	mlflow-server push pull lock lock-upgrade runs

install: $(VENV)/.installed-$(EXTRAS)

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install --quiet uv==$(UV_VERSION)

# --locked: install exactly uv.lock (hashes checked), and stop if it no longer matches
# pyproject.toml (then run `make lock`). Exact: packages not in the lock are removed.
$(VENV)/.installed-$(EXTRAS): pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --quiet --python $(PYTHON) $(UV_EXTRAS)
	@touch $@

# Re-lock after editing a pin in pyproject.toml (everything else stays as locked).
lock: $(UV)
	$(UV) lock

# The newest versions pyproject.toml's pins allow, for every package not pinned there.
lock-upgrade: $(UV)
	$(UV) lock --upgrade

demo: install
	$(PY) -m pneumonia demo

# ruff; then deptry: every third-party import declared, nothing declared unused (pyproject.toml
# [tool.deptry]), and the `team` extra's packages imported only in pneumonia/team.
lint: install
	$(VENV)/bin/ruff check pneumonia stages tests benchmarks
	$(VENV)/bin/deptry pneumonia stages
	$(VENV)/bin/deptry pneumonia stages --extend-exclude pneumonia/team --optional-dependencies-dev-groups dev,team

test: install lint
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

reproduce: install
	dvc repro

# A tracking server (MLFLOW_TRACKING_URI=http...) serves its own UI; `mlflow ui` cannot open it.
mlflow-ui: install
	@case "$${MLFLOW_TRACKING_URI:-}" in http://*|https://*) \
		echo "MLFLOW_TRACKING_URI is a tracking server: open its own UI, $$MLFLOW_TRACKING_URI"; \
		exit 0;; esac; \
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui \
		--backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
		--host 127.0.0.1 --port $(UI_PORT)

ablation: install
	$(PY) -m pneumonia ablation

# dvc exp show without the dependencies' hashes (until train and evaluate are in the committed
# dvc.lock, every experiment differs from main in all of them), sorted on validation, never test.
runs: install
	$(VENV)/bin/dvc exp show --only-changed --drop 'Created|.*/' --sort-by val_roc_auc

bench: install
	$(PY) -m benchmarks.run

clean-venv:
	rm -rf $(VENV) .uv

# ---- Working as a team (docs/team.md) ---------------------------------------------------------
# A local S3 API (moto), PostgreSQL (pgserver) and `mlflow server` on 127.0.0.1 until Ctrl-C;
# URLs in .team/servers.json, exports in .team/env.sh.
S3_PORT ?= 9000
mlflow-server: install
	$(PY) -m pneumonia team up --dir .team --mlflow-port $(MLFLOW_PORT) --s3-port $(S3_PORT)

push: install
	$(PY) -m pneumonia.team.remote push

pull: install
	$(PY) -m pneumonia.team.remote pull
