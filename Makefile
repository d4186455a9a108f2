# Two commands on a fresh machine: `make run` and `make test`.
# Both bootstrap .venv themselves; nothing needs installing by hand but Python 3.11+.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench bench-read bench-executions bench-audit bench-bus bench-validate bench-webhooks bench-stream bench-console bench-chaos clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/reporunner serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/write_throughput.py $(ARGS)

bench-read: $(STAMP)
	$(BIN)/python bench/projection_rebuild.py $(ARGS)

bench-executions: $(STAMP)
	$(BIN)/python bench/executions.py $(ARGS)

bench-audit: $(STAMP)
	$(BIN)/python bench/audit.py $(ARGS)

bench-bus: $(STAMP)
	$(BIN)/python bench/bus.py $(ARGS)

bench-validate: $(STAMP)
	$(BIN)/python bench/validation.py $(ARGS)

bench-webhooks: $(STAMP)
	$(BIN)/python bench/webhooks.py $(ARGS)

bench-stream: $(STAMP)
	$(BIN)/python bench/stream.py $(ARGS)

bench-console: $(STAMP)
	$(BIN)/python bench/console.py $(ARGS)

bench-chaos: $(STAMP)
	$(BIN)/python bench/chaos.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
