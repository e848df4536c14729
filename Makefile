# gatesweep — `make demo` and `make test` work on a fresh Debian machine (see README).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
GS := $(VENV)/bin/gatesweep
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)
BACKEND ?= slurm
DRY_RUN ?=
ARGS ?=
PYTEST_ARGS ?=
export SLURM_ROOT ?= /tmp/gatesweep-slurm
# the test cluster's nodes: test hosts with their own address each (scripts/slurm_net.sh); NODES=1: localhost
NODES ?= 3
export SLURM_NODES ?= $(NODES)
export MLFLOW_ROOT ?= /tmp/gatesweep-mlflow
export RAY_AUTH_MODE ?= disabled
export MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT ?= true
# pip's local index config prints one warning per package; keep the output readable.
PIP_QUIET := 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

.PHONY: help setup test lint demo data-synth services-down status test-slurm test-multinode test-reliability test-ray stage1-sweep stage2-sweep stage2_5-sweep stage3-sweep \
        lr-search tables report mlflow-ui mlflow-up mlflow-down slurm-up slurm-down services-up bench clean

help:
	@echo "make demo     tiny stage-1 sweep on CPU (synthetic data, local MLflow), then the stage table"
	@echo "make test     set up and run the whole test suite (real Slurm, MLflow server, Ray)"
	@echo "make stage{1,2,2_5,3}-sweep BACKEND=local|slurm|ray [DRY_RUN=1] [ARGS='key=value ...']"
	@echo "make lr-search [DRY_RUN=1] | tables | report SPEC=... | status SPEC=... | mlflow-ui | mlflow-up"
	@echo "make slurm-up [NODES=3] | slurm-down   (the test cluster: NODES test hosts, 8 fake GPUs each)"
	@echo "make lint | bench (GPU machine) | test-slurm | test-multinode | test-ray | test-reliability"

# ---------------------------------------------------------------- environment
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "[setup] installing into $(VENV) (torch 2.13 CPU from local disk, then the project with all extras)"
	@$(VENV)/bin/pip install -q torch==2.13.0 $(PIP_QUIET)
	@$(VENV)/bin/pip install -q -e '.[all,dev]' $(PIP_QUIET)
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

setup: $(STAMP)

# ---------------------------------------------------------------- tests and lint
services-up: $(STAMP)  ## what the tests need: Slurm + Chromium (the tests start their own MLflow server)
	@bash scripts/services.sh up slurm chromium

services-down:
	@bash scripts/services.sh down

test: $(STAMP) services-up
	@source $(SLURM_ROOT)/env.sh && $(PY) -m pytest -q -ra $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check trainer sweeps cluster analysis gatesweep tests bench
	$(VENV)/bin/pyright

# ---------------------------------------------------------------- the main job
data/synth/synth.json: | $(STAMP)
	$(GS) data synth --out data/synth

data-synth: data/synth/synth.json

demo: $(STAMP) data/synth/synth.json
	@start=$$(date +%s); \
	$(GS) run sweeps/demo.yaml --backend local; \
	$(GS) table sweeps/demo.yaml; \
	$(PY) -c "import json; d = json.load(open('data/synth/synth.json')); print(f\"(synthetic source: Bayes-optimal val loss {d['entropy_nats_per_token']:.3f} nats/token, ln(vocab) = {d['ln_vocab']:.3f})\")"; \
	echo "demo took $$(( $$(date +%s) - start ))s after setup; see the runs with: make mlflow-ui, then the MLflow UI links above"

# ---------------------------------------------------------------- study stages
# WAIT=1 blocks with the progress display (slurm); DRY_RUN=1 prints what would be submitted
stage1-sweep stage2-sweep stage2_5-sweep stage3-sweep: $(STAMP)
	$(GS) run sweeps/$(@:-sweep=).yaml --backend $(BACKEND) $(if $(DRY_RUN),--dry-run) $(if $(WAIT),--wait) $(ARGS)

status: $(STAMP)  ## make status SPEC=sweeps/stage2.yaml
	$(GS) status $(or $(SPEC),sweeps/stage2.yaml) $(ARGS)

test-reliability: $(STAMP) services-up
	@source $(SLURM_ROOT)/env.sh && $(PY) -m pytest -q -ra tests/test_sweeps_*.py tests/test_reliability_*.py tests/test_security.py $(PYTEST_ARGS)

test-ray: $(STAMP) services-up
	@source $(SLURM_ROOT)/env.sh && $(PY) -m pytest -q -ra -m ray $(PYTEST_ARGS)

test-slurm: $(STAMP)
	@bash scripts/slurm_up.sh && source $(SLURM_ROOT)/env.sh && $(PY) -m pytest -q -ra tests/test_slurm_*.py $(PYTEST_ARGS)

test-multinode: $(STAMP)  ## several hosts: needs NODES >= 3
	@bash scripts/slurm_up.sh && source $(SLURM_ROOT)/env.sh && $(PY) -m pytest -q -ra -k multinode $(PYTEST_ARGS)

lr-search: $(STAMP) data/synth/synth.json
	$(GS) run sweeps/lr_search.yaml --backend ray $(if $(DRY_RUN),--dry-run) $(ARGS)

tables: $(STAMP)  ## every stage with runs in the store: Markdown + study-format CSV under reports/tables/
	@set -e; for s in sweeps/stage1.yaml sweeps/stage2.yaml sweeps/stage2_5.yaml sweeps/stage3.yaml \
	    sweeps/lr_search.yaml sweeps/demo.yaml; do \
	  $(GS) table $$s --format md --out reports/tables --skip-empty $(ARGS); \
	  $(GS) table $$s --compat --format csv --out reports/tables --skip-empty $(ARGS); done

report: $(STAMP)
	$(GS) report $(or $(SPEC),sweeps/demo.yaml) $(ARGS)

# ---------------------------------------------------------------- services
mlflow-ui: $(STAMP)  ## the project's own store (sqlite:///mlflow.db) on http://127.0.0.1:$(or $(PORT),5000)
	@echo "MLflow UI: http://127.0.0.1:$(or $(PORT),5000)/#/experiments?workflowType=machine_learning (Model training view; a sweep prints links to its trials and decision table)"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlruns \
	  --host 127.0.0.1 --port $(or $(PORT),5000)

mlflow-up: $(STAMP)
	@bash scripts/mlflow_up.sh

mlflow-down:
	@bash scripts/mlflow_down.sh

slurm-up:
	@bash scripts/slurm_up.sh

slurm-down:
	@bash scripts/slurm_down.sh

bench:
	python3 bench/run.py $(ARGS)

clean:
	rm -rf runs logs experiments reports/demo mlflow.db mlruns
