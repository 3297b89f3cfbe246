# make train: create .venv if missing, install, train with the defaults.
# make test:  create .venv if missing, install, run the test suite (the slow tests aside).
# make test-slow: the slow tests (real data, kill -9 loops, torch.compile); CI runs both.
# DATA_DIR=path points at a local copy of CIFAR-10 (folder or .tar.gz);
# without it the official archive is downloaded (and cached).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?=
ARGS ?=

.PHONY: train test test-slow lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/cifar-resnet train $(if $(DATA_DIR),--data-dir "$(DATA_DIR)") $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# make docs: the README's results table and figure from benchmarks/results/, and the
# generated pages docs/cli.md and docs/run-folder.md from the code (tests/test_docs.py
# fails when a committed one is stale).
.PHONY: docs
docs: $(STAMP)
	$(BIN)/python benchmarks/results_table.py --write
	$(BIN)/python benchmarks/screen_table.py --write
	$(BIN)/python benchmarks/accuracy_vs_time.py
	$(BIN)/python benchmarks/reference_docs.py --write

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
