# Every target creates .venv and installs the project into it first, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test unit lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The whole suite: unit tests, lint, types, import contracts and integration tests on a real Postgres.
# The system's PostgreSQL servers, when installed, are a second target for the integration tests.
SYSTEM_PG_BINDIRS := $(wildcard /usr/lib/postgresql/*/bin)

test: $(STAMP)
	$(BIN)/ruff check rlsproxy tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest
	@for dir in $(SYSTEM_PG_BINDIRS); do \
		echo "== integration tests against $$dir"; \
		RLSPROXY_PG_BINDIR=$$dir $(BIN)/pytest -q tests/integration || exit 1; \
	done

unit: $(STAMP)
	$(BIN)/pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check rlsproxy tests bench
	$(BIN)/ruff format --check rlsproxy tests
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/python -m rlsproxy.demo

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
