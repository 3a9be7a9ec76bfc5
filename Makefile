# `make demo` and `make test` work from a clean clone: each sets up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck imports proto-check rules unit gen bench redis-server prometheus clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo

test: $(STAMP) redis-server prometheus lint typecheck imports proto-check rules unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The layering contract in pyproject.toml (docs/architecture.md).
imports: $(STAMP)
	$(BIN)/lint-imports --no-logo

proto-check: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" buf lint
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/check_breaking
	$(BIN)/python scripts/gen --check

# The shipped Prometheus configuration, recording and alerting rules, and their unit tests.
rules: prometheus
	promtool check config deploy/prometheus.yml
	promtool check rules deploy/prometheus/*.rules.yml
	promtool test rules deploy/prometheus/tests/*.test.yml

# Most tests wait on processes, sockets and timers rather than the CPU, so three workers on two
# cores take about half the time of one (docs/decisions.md). TEST_WORKERS=0 runs them in-process.
TEST_WORKERS ?= 3
unit: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS)

# Tests start private redis-server processes; install it from Debian when missing and we are root.
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: install it (e.g. sudo apt-get install redis-server) and rerun"; exit 1; \
	  fi; }

# promtool (rule tests) and the end-to-end test's prometheus and prometheus-pushgateway come from
# Debian; install them when missing and we are root (the tests run private instances on free ports).
prometheus:
	@{ command -v promtool && command -v prometheus && command -v prometheus-pushgateway; } \
	  >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      prometheus prometheus-pushgateway >/dev/null; \
	  else \
	    echo "prometheus tools are missing: install them (e.g. sudo apt-get install prometheus prometheus-pushgateway) and rerun"; exit 1; \
	  fi; }

gen: $(STAMP)
	$(BIN)/python scripts/gen

bench: $(STAMP) redis-server
	$(BIN)/python scripts/bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
