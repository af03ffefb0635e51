# Two commands on a fresh machine: `make up` runs Helpline, `make test` runs every check.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export UV_LINK_MODE ?= copy

.PHONY: up test lint typecheck contracts unit bench-query deploy-check install

install:
	@command -v uv >/dev/null 2>&1 || test -x $(HOME)/.local/bin/uv || python3 -m pip install --user --quiet uv
	$(UV) sync --locked --all-packages

up: install
	$(UV) run helpline up

lint: install
	$(UV) run ruff format --check .
	$(UV) run ruff check .

typecheck: install
	$(UV) run mypy

contracts: install
	$(UV) run lint-imports

test: lint typecheck contracts
	$(UV) run pytest

bench-query: install
	$(UV) run python bench/query_latency.py
