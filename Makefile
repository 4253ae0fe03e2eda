# bhashaflow: `make demo` sets everything up and runs the pipeline offline; `make test` runs the checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_HOME ?= $(CURDIR)/.prefect
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Idle OpenMP threads sleep instead of spinning (spinning slows torch 10x+ on a shared small CPU).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install demo test lint format typecheck pytest bench clean reliability soak

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

# The formatter (ruff format: `make format` applies it), the linter, the import contracts and mypy over every package.
PACKAGES := bhashaflow connectors tasks flows serving tests benchmarks
lint: install
	$(BIN)/ruff format --check $(PACKAGES)
	$(BIN)/ruff check $(PACKAGES)
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy bhashaflow connectors serving tasks flows benchmarks

format: install
	$(BIN)/ruff format $(PACKAGES)

typecheck: install
	$(BIN)/mypy bhashaflow connectors serving tasks flows benchmarks

pytest: install
	$(BIN)/pytest -q

test: lint pytest

# The fault and abuse suite alone (it also runs inside `make test`), its scenario table printed at the end.
RELIABILITY_LOG ?= runs/reliability/scenarios.jsonl
reliability: install
	@mkdir -p $(dir $(RELIABILITY_LOG)); rm -f $(RELIABILITY_LOG)
	BHASHAFLOW_RELIABILITY_LOG=$(CURDIR)/$(RELIABILITY_LOG) $(BIN)/pytest -q -m reliability tests/reliability
	$(BIN)/python tests/reliability/report.py $(RELIABILITY_LOG)

# The same suite at the larger randomized counts (BHASHAFLOW_SOAK=1): 500 source runs each, 30 training kills...
SOAK_LOG ?= runs/reliability/soak.jsonl
soak: install
	@mkdir -p $(dir $(SOAK_LOG)); rm -f $(SOAK_LOG)
	BHASHAFLOW_SOAK=1 BHASHAFLOW_RELIABILITY_LOG=$(CURDIR)/$(SOAK_LOG) $(BIN)/pytest -q -m reliability \
	  -o timeout=3600 tests/reliability
	$(BIN)/python tests/reliability/report.py $(SOAK_LOG)
	@echo "side by side with a default-count run: $(BIN)/python tests/reliability/report.py $(RELIABILITY_LOG) $(SOAK_LOG)"

clean:
	rm -rf runs registry .prefect .mypy_cache .ruff_cache .pytest_cache

# --- Prefect on this machine: server (UI on http://$(PREFECT_PUBLIC_HOST):$(PREFECT_PORT)), the bhashaflow-local
# process pool, the deployments of prefect.yaml, and a worker. prefect-down stops exactly the processes that
# prefect-up started, by the pid files it wrote under $(PREFECT_HOME)/up (with their logs).
PREFECT_HOST ?= 127.0.0.1
PREFECT_PORT ?= 4200
# The address a browser reaches the server at: PREFECT_HOST, or this machine's name when the server binds every
# interface. The UI asks /ui-settings where its API is; Prefect answers PREFECT_UI_API_URL, else PREFECT_API_URL,
# else its own host and port settings (4200 by default, whatever --port says): so prefect-up sets it. Behind a
# proxy: make prefect-up PREFECT_UI_API=https://prefect.example.com/api
PREFECT_PUBLIC_HOST ?= $(if $(filter 0.0.0.0 ::,$(PREFECT_HOST)),$(shell hostname -f 2>/dev/null || hostname),$(PREFECT_HOST))
PREFECT_UI := http://$(PREFECT_PUBLIC_HOST):$(PREFECT_PORT)
PREFECT_UI_API ?= $(PREFECT_UI)/api
PREFECT_POOL := bhashaflow-local
PREFECT_UP := $(PREFECT_HOME)/up
PREFECT_API := http://$(PREFECT_HOST):$(PREFECT_PORT)/api
PREFECT_CLI := PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect

.PHONY: prefect-up prefect-down

prefect-up: install
	@mkdir -p $(PREFECT_UP)
	@if [ -f $(PREFECT_UP)/server.pid ] && kill -0 $$(cat $(PREFECT_UP)/server.pid) 2>/dev/null; then \
	  echo "prefect-up: already up (server pid $$(cat $(PREFECT_UP)/server.pid)); run make prefect-down first"; exit 1; fi
	PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_SERVER_API_HOST=$(PREFECT_HOST) PREFECT_SERVER_API_PORT=$(PREFECT_PORT) \
	  PREFECT_UI_API_URL=$(PREFECT_UI_API) PREFECT_UI_URL=$(PREFECT_UI) nohup $(BIN)/prefect server start \
	  --host $(PREFECT_HOST) --port $(PREFECT_PORT) > $(PREFECT_UP)/server.log 2>&1 & echo $$! > $(PREFECT_UP)/server.pid
	@printf "prefect-up: waiting for $(PREFECT_API) "; \
	for i in $$(seq 1 360); do \
	  if ! kill -0 $$(cat $(PREFECT_UP)/server.pid) 2>/dev/null; then \
	    echo; tail -20 $(PREFECT_UP)/server.log; echo "prefect-up: the server exited (log: $(PREFECT_UP)/server.log)"; exit 1; fi; \
	  $(BIN)/python -c "import urllib.request as r; r.urlopen('$(PREFECT_API)/health', timeout=2)" 2>/dev/null \
	    && { echo "up"; exit 0; }; \
	  printf .; sleep 0.5; \
	done; echo; echo "prefect-up: no answer from $(PREFECT_API) in 180 s (log: $(PREFECT_UP)/server.log)"; exit 1
	$(PREFECT_CLI) work-pool create $(PREFECT_POOL) --type process --overwrite
	$(PREFECT_CLI) --no-prompt deploy --all
	PREFECT_API_URL=$(PREFECT_API) nohup $(BIN)/prefect worker start --pool $(PREFECT_POOL) \
	  > $(PREFECT_UP)/worker.log 2>&1 & echo $$! > $(PREFECT_UP)/worker.pid
	@echo "prefect-up: UI $(PREFECT_UI) (its API $(PREFECT_UI_API))  worker pid $$(cat $(PREFECT_UP)/worker.pid)" \
	  "(log $(PREFECT_UP)/worker.log); try: PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect deployment run adapter-pipeline/smoke"

# A worker turns its first SIGTERM into a graceful SIGINT and only a second one stops it: send one, wait, send
# another, then SIGKILL what is still there. A pid whose process is no longer prefect's is left alone.
prefect-down:
	@alive() { st=$$(ps -p $$1 -o stat= 2>/dev/null); [ -n "$$st" ] && [ "$${st#Z}" = "$$st" ]; }; \
	for name in worker server; do \
	  pidfile=$(PREFECT_UP)/$$name.pid; [ -f $$pidfile ] || continue; pid=$$(cat $$pidfile); \
	  if alive $$pid && ps -p $$pid -o args= | grep -q prefect; then \
	    for sig in TERM TERM KILL; do \
	      kill -$$sig $$pid 2>/dev/null || true; \
	      for i in $$(seq 1 20); do alive $$pid || break; sleep 0.25; done; \
	      alive $$pid || break; \
	    done; \
	    if alive $$pid; then echo "prefect-down: $$name (pid $$pid) is still running"; exit 1; fi; \
	    echo "prefect-down: stopped $$name (pid $$pid)"; \
	  fi; \
	  rm -f $$pidfile; \
	done
