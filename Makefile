# DynDoRA harness. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default (no CUDA download); on a GPU machine: make install TORCH_SPEC="torch"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format demo clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"   # torch first: keeps pip from pulling a CUDA build
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv with torch (CPU build) and the project

test: install ## run the fast offline test suite (tiny models, shared/data via DORA_DATA_DIR)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install ## the test suite including slow tests
	$(PY) -m pytest -q -m "not gpu and not network" $(PYTEST_ARGS)

lint: install ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## ruff format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

DEMO_DIR ?= runs/demo
demo: install ## offline demo: real all-MiniLM-L6-v2 fine-tuned on a 4000-example slice of real SST-2 (CPU, minutes)
	rm -rf $(DEMO_DIR)
	$(PY) run.py task=sst2 method=full model=minilm data_dir=data/demo \
	  trainer.epochs=2 trainer.batch_size=32 trainer.lr=5e-5 trainer.max_length=64 \
	  logger=none output_dir=$(DEMO_DIR)
	@$(PY) -c "import json; r = json.load(open('$(DEMO_DIR)/result.json')); \
	  print(f\"SST-2 dev accuracy {r['metrics']['dev/accuracy']:.2f}% after {r['timing']['steps']} steps, \
	  {r['timing']['train_s']:.0f} s training; result: $(DEMO_DIR)/result.json\")"

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf runs multirun outputs .pytest_cache .ruff_cache
