# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint unit bench clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,gateways]' -e ./clients/python
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/process-status serve

lint: $(STAMP)
	$(BIN)/ruff check service tests bench clients
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint unit

bench: $(STAMP)
	@command -v wrk >/dev/null || { echo 'make bench needs wrk: apt-get install -y wrk'; exit 1; }
	$(BIN)/python bench/run.py
	$(BIN)/python bench/waiters.py
	$(BIN)/python bench/restore.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
