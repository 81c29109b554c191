# mohlog — run `make help` for the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= /var/lib/mohlog
LISTEN ?= 127.0.0.1:7480

.PHONY: help setup run test test-unit test-privileged test-integration lint fmt bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup: ## install what is missing (Debian packages, headers link, mounts, venv, deps)
	@scripts/setup.sh system
	@scripts/setup.sh venv

setup-embeddings: setup ## also install torch (CPU), sentence-transformers, FAISS, MiniLM
	@scripts/setup.sh embeddings

run: setup ## start the hub and the local agent (DATA=..., LISTEN=host:port)
	@$(VENV)/bin/mohlog run --data $(DATA) --listen $(LISTEN)

test: setup-embeddings ## install what is missing, then run every test
	@$(PY) -m pytest -q tests

test-unit: setup ## unit tests only (no root needed)
	@$(PY) -m pytest -q tests/unit

test-privileged: setup ## real eBPF probe tests (root)
	@$(PY) -m pytest -q tests/privileged

test-integration: setup ## real hub processes over real sockets
	@$(PY) -m pytest -q tests/integration

lint: setup ## ruff
	@$(VENV)/bin/ruff check .

bench: setup-embeddings ## list the benchmarks (run each with $(PY) bench/NAME.py)
	@ls bench/*.py

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
