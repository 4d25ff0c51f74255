# Gatehouse: `make run` starts the whole product on the embedded default; `make test` runs the suite.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PY_FOUND := $(shell bash scripts/find-python.sh)
PORT ?= 8000

.PHONY: run test lint bench bench-dashboards clean

$(BIN)/python:
	@test -n "$(PY_FOUND)" || { echo "Gatehouse needs Python 3.12 or newer (python3.12 / python3.13 on PATH)."; exit 1; }
	$(PY_FOUND) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	@DEBUG=1 PORT=$(PORT) PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/run.sh

test: $(VENV)/.installed-dev
	@bash scripts/test-prereqs.sh
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Gateway benchmark (docs/BENCHMARKS.md): needs PostgreSQL, Redis and wrk; bounded run time.
bench: DATABASE_URL ?= postgres://postgres@localhost:5432/gatehouse_bench
bench: REDIS_URL ?= redis://localhost:6379/0
bench: $(VENV)/.installed-dev
	@command -v wrk >/dev/null || { echo "make bench needs wrk: apt-get install -y wrk"; exit 1; }
	DATABASE_URL=$(DATABASE_URL) REDIS_URL=$(REDIS_URL) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/gateway.py $(BENCH_ARGS)

# Dashboard benchmark (docs/BENCHMARKS.md): builds, or reuses, its own database of 10 M usage events
# (a few minutes the first time), then times each page. BENCH_ARGS="--events 1000000" for a quick run.
# Its database is gatehouse_dashbench on BENCH_PG (default postgres://postgres@localhost:5432).
bench-dashboards: $(VENV)/.installed-dev
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/dashboards.py $(BENCH_ARGS)

clean:
	rm -rf var artifacts .pytest_cache
