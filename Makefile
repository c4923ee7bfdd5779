# cx-stream: `make run` starts everything locally on simulated traffic; `make test` tests it all.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help run test lint unit rules integration stop status topics clean bench

help:
	@echo "make run     start Kafka, Redis, the worker and the traffic simulator (Ctrl-C stops)"
	@echo "make test    lint, unit, integration and end-to-end tests on a real Kafka and Redis"
	@echo "make lint    ruff and mypy --strict"
	@echo "make rules   promtool checks and unit tests of the Prometheus rules"
	@echo "make stop    stop the local Kafka and Redis that 'make run' started"
	@echo "make status  what the local stack runs"
	@echo "make bench   throughput, latency and memory on a real Kafka and Redis (BENCH_SCALE=small: quick)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	@deploy/local/run.sh

lint: $(STAMP)
	$(BIN)/ruff check service tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

rules:
	@deploy/local/stack.sh tools
	promtool check rules deploy/prometheus/rules/*.yml
	cd deploy/prometheus/tests && promtool test rules *.test.yml

integration: $(STAMP)
	@deploy/local/stack.sh tools
	$(BIN)/pytest -q tests/integration tests/e2e

test: lint unit rules integration

# Never part of `make test`: about 30 minutes (BENCH_SCALE=small: about 10). Starts its own Kafka
# and Redis in .cx-bench/ and writes the table into docs/benchmarks.md.
bench: $(STAMP)
	BENCH_SCALE=$(or $(BENCH_SCALE),full) BENCH_RUNS=$(or $(BENCH_RUNS),3) $(BIN)/python -m bench

topics: $(STAMP)
	@eval "$$(deploy/local/stack.sh env | sed 's/^/export /')" && $(BIN)/cx-stream topics

stop:
	@deploy/local/stack.sh stop

status:
	@deploy/local/stack.sh status

clean: stop
	rm -rf .cx-local .cx-test .cx-bench .mypy_cache .ruff_cache .pytest_cache
