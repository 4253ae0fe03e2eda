# bhashaflow: `make demo` sets everything up and runs the pipeline offline; `make test` runs the checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_HOME ?= $(CURDIR)/.prefect
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first: the pinned CPU build lies on the disk; an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/bhashaflow demo configs/demo.yaml

lint: install
	$(BIN)/ruff check bhashaflow connectors tasks flows serving tests benchmarks

typecheck: install
	$(BIN)/mypy bhashaflow connectors

pytest: install
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf runs registry .prefect .mypy_cache .ruff_cache .pytest_cache
