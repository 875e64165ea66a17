# Two commands do all the set-up on a fresh machine:
#   make run   create .venv, install, run the whole pipeline (Prefect flow driving DVC)
#   make test  same bootstrap, then the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
# Prefect's local state (ephemeral API database, settings) stays inside the project.
export PREFECT_HOME ?= $(abspath .prefect)
# Without PREFECT_API_URL, a flow starts Prefect's temporary API server, whose default start-up
# timeout (20 s) is too short on a loaded machine; its database is created at install (below).
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 600
# No anonymous usage telemetry from the local API server (there may be no network; a failing
# heartbeat only adds tracebacks to the log).
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
PREFECT_DB := $(PREFECT_HOME)/prefect.db

.PHONY: install run test test-fast lint bench mutate clean-outputs help

help:
	@echo "make run    - set up .venv and run the pipeline on the default dataset"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make lint   - ruff + mypy"
	@echo "make bench  - benchmarks (results go to BENCHMARKS.md by hand)"
	@echo "make mutate - mutation testing of mtl/weighting/ (slow; not part of make test)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Create and migrate Prefect's SQLite database once, at set-up, not inside the first flow run.
$(PREFECT_DB): $(STAMP)
	$(VENV)/bin/prefect server database upgrade -y

install: $(STAMP) $(PREFECT_DB)

run: install
	@test -d .git || git init -q
	$(PY) -m flows.pipeline

# One pytest worker per core (pytest-xdist); a test file stays on one worker, so module-scoped
# fixtures (a reference pipeline run) are built once. Files start in collection order, which
# tests/conftest.py makes slow-first (xdist's default reorder would start the files with the
# most tests first, leaving the long end-to-end files for last). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= logical
test: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

# Mutation testing of the weighting engine (mutmut, config in pyproject.toml [tool.mutmut]);
# slow (a pytest run per mutant), so NOT part of `make test`. MUTANTS narrows it, e.g.
# make mutate MUTANTS='mtl.weighting.famo*'. Score and survivors: docs/weighting.md.
mutate: install
	$(PY) -m pip install --quiet -e '.[mutate]'
	$(VENV)/bin/mutmut run $(MUTANTS)
	$(VENV)/bin/mutmut results

lint: install
	$(VENV)/bin/ruff check mtl flows tests benchmarks
	$(VENV)/bin/mypy

bench: install
	$(PY) benchmarks/weighting_cost.py
