# cx-stream: `make run` starts everything locally on simulated traffic; `make test` tests it all.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help run test lint unit rules integration integration-cluster \
	integration-full integration-cluster-full integration-cluster-month stop status topics clean bench chaos \
	screenshots

help:
	@echo "make run     start Kafka, Redis, the worker and the traffic simulator (Ctrl-C stops)"
	@echo "make test    lint, unit, integration and end-to-end tests on a real Kafka and Redis"
	@echo "make integration-cluster  the Redis store and engine tests on a 3-master Redis Cluster"
	@echo "make integration-full  every integration and end-to-end test (make test leaves out one month replay)"
	@echo "make lint    ruff and mypy --strict"
	@echo "make rules   promtool checks and unit tests of the Prometheus rules"
	@echo "make chaos   every fault scenario at full size, compared with an oracle (docs/reliability.md)"
	@echo "make stop    stop the local Kafka and Redis that 'make run' started"
	@echo "make status  what the local stack runs"
	@echo "make bench   throughput, latency and memory on a real Kafka and Redis (BENCH_SCALE=small: quick)"
	@echo "make screenshots  refresh the pictures in docs/ from the pages in a real browser"

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

# `make test` leaves out the month replayed with a 24-hour window (the 7-day one runs the same
# code on the same records), so the suite stays within 15 minutes; `make integration-full` runs
# everything.
integration: $(STAMP)
	@deploy/local/stack.sh tools
	$(BIN)/pytest -q --durations=8 tests/integration tests/e2e -k "not 24h"

integration-full: $(STAMP)
	@deploy/local/stack.sh tools
	$(BIN)/pytest -q --durations=8 tests/integration tests/e2e

# The same test files, unchanged, with the test stack's Redis a 3-master Redis Cluster
# (`make integration-cluster` leaves out the two month-long replays and the comparison of
# pre-loaded and trickled traffic, which tests batching, not the store: all three run on the
# single Redis).
CLUSTER_TESTS := tests/integration/test_redis_store.py tests/integration/test_redis_scripts.py \
	tests/integration/test_erasure_store.py tests/e2e/test_engine.py

integration-cluster: $(STAMP)
	@deploy/local/stack.sh tools
	CX_TEST_REDIS_MODE=cluster $(BIN)/pytest -q $(CLUSTER_TESTS) -k "not anonymous_bank and not trickled"

integration-cluster-full: $(STAMP)
	@deploy/local/stack.sh tools
	CX_TEST_REDIS_MODE=cluster $(BIN)/pytest -q $(CLUSTER_TESTS)

# The 7-day month replay on the cluster too (`make test` runs `integration-cluster`: the store,
# script and erasure tests and the engine's API test, not the month; the month runs on the
# single Redis, and the store it writes through is the one these tests cover on the cluster).
integration-cluster-month: $(STAMP)
	@deploy/local/stack.sh tools
	CX_TEST_REDIS_MODE=cluster $(BIN)/pytest -q $(CLUSTER_TESTS) -k "not 24h and not trickled"

test: lint unit rules integration integration-cluster

# Never part of `make test`: about 30 minutes (BENCH_SCALE=small: about 10). Starts its own Kafka
# and Redis in .cx-bench/ and writes the table into docs/benchmarks.md.
$(VENV)/.bench-installed: $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	@touch $@

bench: $(VENV)/.bench-installed
	BENCH_SCALE=$(or $(BENCH_SCALE),full) BENCH_RUNS=$(or $(BENCH_RUNS),3) $(BIN)/python -m bench

# The pictures in docs/, taken by the browser tests (which otherwise write them to .cx-test/).
screenshots: $(STAMP)
	@deploy/local/stack.sh tools
	CX_TEST_SCREENSHOTS=$(CURDIR)/docs $(BIN)/pytest -q tests/e2e/test_pages.py

# Full-size fault scenarios (docs/reliability.md); one result line per scenario in .cx-test/chaos.txt
chaos: $(STAMP)
	@deploy/local/stack.sh tools
	@mkdir -p .cx-test && rm -f .cx-test/chaos.txt
	CX_CHAOS=full CX_CHAOS_RESULTS=$(CURDIR)/.cx-test/chaos.txt $(BIN)/pytest -q -s tests/chaos
	@cat .cx-test/chaos.txt

topics: $(STAMP)
	@eval "$$(deploy/local/stack.sh env | sed 's/^/export /')" && $(BIN)/cx-stream topics

stop:
	@deploy/local/stack.sh stop

status:
	@deploy/local/stack.sh status

clean: stop
	rm -rf .cx-local .cx-test .cx-bench .mypy_cache .ruff_cache .pytest_cache
