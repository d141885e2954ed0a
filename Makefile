# Every target bootstraps .venv on first use: a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export AUTOSINK_HOME ?= $(CURDIR)/.autosink
export DAGSTER_HOME ?= $(AUTOSINK_HOME)/dagster

.PHONY: demo dev test test-realdata install clean-home mlflow-ui lint bench measurements

# Versions come from uv.lock as committed (--frozen: a stale lock is an error, never re-resolved);
# --inexact keeps pip and uv themselves in the venv. Bytecode is compiled once here: every
# process the platform starts (code server, each run, the CLI, test workers) imports torch,
# MLflow and Dagster, and where Python may not write it (PYTHONDONTWRITEBYTECODE, a read-only
# venv) each one would compile them from source again.
$(BIN)/autosink: pyproject.toml pi_client/pyproject.toml uv.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "uv>=0.13,<0.14"
	$(BIN)/uv sync --frozen --inexact --python $(BIN)/python --extra test --compile-bytecode
	$(BIN)/python -m compileall -q autosink_platform pi_client >/dev/null
	touch $@

install: $(BIN)/autosink

## The main job on embedded defaults: demo lake -> Dagster -> MLflow -> fleet channel, then a
## day of feedback through the running daemon and fleet API to a device.
demo: install
	$(BIN)/autosink demo

## Dagster UI on the same home, so the demo's materializations show.
dev: install
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml

## The test suite (CI runs it, then test-realdata): everything but the model-quality checks on
## the real datasets.
test: install
	$(BIN)/python -m pytest -m "not realdata"

## Model quality on the real datasets in ../shared/datasets (each skips, naming the folder, where absent).
test-realdata: install
	$(BIN)/python -m pytest -m realdata

clean-home:
	rm -rf $(AUTOSINK_HOME) mlflow/mlflow.db mlflow/artifacts

## The MLflow UI over the embedded registry (http://127.0.0.1:5000).
mlflow-ui: install
	MLFLOW=$(CURDIR)/$(BIN)/mlflow mlflow/server.sh

## Lint and format check (ruff, from the dev extra).
lint: install
	$(BIN)/uv sync --frozen --inexact --python $(BIN)/python -q --extra dev
	$(BIN)/ruff check autosink_platform assets_tests pi_client benchmarks
	$(BIN)/ruff format --check autosink_platform assets_tests pi_client benchmarks

## Every benchmark (minutes; needs ../shared/datasets, and PostgreSQL + RabbitMQ for scale_out): markdown tables, JSON in benchmarks/results/.
bench: install
	$(BIN)/uv sync --frozen --inexact --python $(BIN)/python -q --extra test --extra bench
	$(BIN)/python benchmarks/demo_quality.py
	$(BIN)/python benchmarks/classifier_loss.py
	$(BIN)/python benchmarks/feedback_to_device.py
	$(BIN)/python benchmarks/thresholds.py
	$(BIN)/python benchmarks/conv_ae_throughput.py --repeats 3
	$(BIN)/python benchmarks/reference_pipelines.py
	$(BIN)/python benchmarks/skab_protocol.py
	$(BIN)/python benchmarks/scale_out.py
	$(BIN)/python benchmarks/measurements.py

## docs/measurements.md from benchmarks/results/*.json (after any benchmark).
measurements: install
	$(BIN)/python benchmarks/measurements.py
