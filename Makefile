# The two set-up commands of the README:
#   make demo   - install everything and run the indexer on an embedded default
#   make test   - install everything and run the test suite
# Both are fast once installed (the install steps run again only when a lock file changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_PY := $(VENV)/.installed
STAMP_NPM := node_modules/.installed

.PHONY: demo test install lint typecheck check bench contracts clean

install: $(STAMP_PY) $(STAMP_NPM)

$(STAMP_PY): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=constraints.txt $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: install
	$(BIN)/audifi-indexer demo

# The suite on both cores (pytest-xdist); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: install
	$(BIN)/pytest -n $(TEST_WORKERS)

lint: $(STAMP_PY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP_PY)
	$(BIN)/mypy

check: lint typecheck test

bench: install
	PIP_CONSTRAINT=constraints.txt $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m bench

contracts: $(STAMP_NPM)
	node scripts/compile_contracts.mjs

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .demo
