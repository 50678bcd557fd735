# marlcli: `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   := torch==2.13.0
STAMP   := $(VENV)/.installed
ARGS    ?=

.PHONY: help install train eval test-fast test test-learning test-all lint format typecheck bench bench-dist clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

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

# The tiers are folders (tests/unit, envs, integration, learning; docs/testing.md). `make test` spreads
# the tests over JOBS pytest-xdist workers (JOBS=1: one process, in file order, as `--pdb` needs).
JOBS    ?= 2
XDIST    = $(if $(filter-out 0 1,$(JOBS)),-n $(JOBS))
PYTEST  := $(BIN)/python -m pytest -q

test-fast: $(STAMP) ## unit + envs tiers, one process (about a minute): make test-fast ARGS="-k contract"
	$(PYTEST) tests/unit tests/envs $(ARGS)

test: $(STAMP) ## what CI runs: every tier (unit, envs, integration, learning) on JOBS=2 workers
	$(PYTEST) $(XDIST) $(ARGS)

test-learning: $(STAMP) ## the learning tests only: make test-learning ARGS=--break-learner=rewards (each must fail)
	$(PYTEST) $(XDIST) tests/learning $(ARGS)

test-all: $(STAMP) ## test plus the composition product (-m composition: every option combination, not only the pairwise sample)
	$(PYTEST) $(XDIST) -m "" $(ARGS)

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
