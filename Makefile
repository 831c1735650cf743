# One quality gate for people, hooks and CI. `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= var
UNITS ?= 60000

.DEFAULT_GOAL := help
.PHONY: help install demo test test-unit lint bench chaos stack-up stack-down stack-status clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

ASSETS := traceline/static/vendor/.manifest.sha256

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found: install Python 3.11+"; exit 3; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# browser assets served by traceline itself (API docs), from the npm registry, integrity-checked
$(ASSETS): deploy/web/assets.json deploy/web/fetch_assets.py
	$(PY) deploy/web/fetch_assets.py

install: $(STAMP) $(ASSETS) ## create .venv, install traceline with its dev tools and its browser assets (idempotent)
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }  # tests/browser

demo: install ## run the whole product locally: broker, processors, sink, a simulated plant, a recall
	$(BIN)/python -m traceline.demo --data-dir $(DATA_DIR) --units $(UNITS)

test: install ## unit + integration tests (starts a local Kafka broker and an embedded ClickHouse)
	$(BIN)/python -m pytest tests -q

test-unit: install ## unit tests only (no I/O, seconds)
	$(BIN)/python -m pytest tests/unit -q

lint: install ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install ## benchmarks, quick versions (figures, not pass/fail); see docs/BENCHMARKS.md
	$(BIN)/python -m benchmarks.recall --serials 200000 --peers postgres
	$(BIN)/python -m benchmarks.pipeline ingest --paired --events 200000
	$(BIN)/python -m benchmarks.pipeline ingest --duration 30 --warmup 15 --events 600000
	$(BIN)/python -m benchmarks.pipeline latency --duration 20 --warmup 10
	$(BIN)/python -m benchmarks.pipeline backlog --events 50000 --genealogy-timeout 180
	$(BIN)/python -m benchmarks.inserts --events 1000 --batches 6

chaos: install ## fault suite on the real broker and store, one scenario at a time (long); see docs/RELIABILITY.md
	$(BIN)/python -m chaos $(if $(SCENARIOS),--scenarios $(SCENARIOS)) $(if $(EVENTS),--events $(EVENTS))

stack-up: install ## start the local Kafka broker (assembled from Maven Central on first use)
	$(BIN)/traceline stack up --data-dir $(DATA_DIR)

stack-down: install ## stop the local Kafka broker
	$(BIN)/traceline stack down --data-dir $(DATA_DIR)

stack-status: install ## is the local broker running?
	$(BIN)/traceline stack status --data-dir $(DATA_DIR)

clean: stack-down ## stop the broker and delete local state (var/)
	rm -rf $(DATA_DIR)
