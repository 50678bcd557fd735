# marlcli: `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed
ARGS    ?=

.PHONY: help install train eval test test-all lint format typecheck bench bench-dist clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)          # the CPU wheel first: a bare `torch` pulls GBs of CUDA
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install marlcli (torch 2.13.0 CPU first)

# a fresh run name per `make train` (a second run never meets the first one's files)
QUICKSTART := quickstart_$(shell date +%Y-%m-%d_%H-%M-%S)_$(shell od -An -N2 -tx1 /dev/urandom | tr -d ' \n')
LATEST_QUICKSTART = $(lastword $(sort $(wildcard results/spread/mappo/quickstart_*)))

train: $(STAMP) ## train MAPPO on spread with the defaults into a new run quickstart_<time>, then evaluate it
	$(BIN)/marl train algo=mappo env=spread run=$(QUICKSTART) $(ARGS)
	$(BIN)/marl eval results/spread/mappo/$(QUICKSTART)

eval: $(STAMP) ## evaluate a run: make eval RUN=results/spread/mappo/<run> (default: the newest quickstart)
	@test -n "$(or $(RUN),$(LATEST_QUICKSTART))" || { echo "make eval: no quickstart run yet; make train first or give RUN=DIR" >&2; exit 2; }
	$(BIN)/marl eval $(or $(RUN),$(LATEST_QUICKSTART)) $(ARGS)

test: $(STAMP) ## the CI suite: unit, integration and small learning tests
	$(BIN)/python -m pytest -q $(ARGS)

test-all: test ## everything (same as test today)

lint: $(STAMP) ## ruff + the import layers (lint-imports, contracts in pyproject.toml)
	$(BIN)/ruff check marlcli tests experiments
	$(BIN)/lint-imports --no-cache --no-logo

format: $(STAMP) ## ruff format + import sorting
	$(BIN)/ruff check --fix --select I marlcli tests experiments
	$(BIN)/ruff format marlcli tests experiments

typecheck: $(STAMP) ## mypy (installed on demand)
	$(BIN)/pip install -q mypy
	$(BIN)/mypy marlcli --ignore-missing-imports

bench: $(STAMP) ## env throughput + time-to-return benchmarks -> results/bench/
	$(BIN)/python -m marlcli.bench $(ARGS)

bench-dist: $(STAMP) ## data-parallel throughput: 1 process x 2 threads vs 2 processes x 1 thread -> docs/bench_dist.json
	$(BIN)/python -m marlcli.bench.dist $(ARGS)

clean: ## remove caches and build outputs (keeps results/ and .venv)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
