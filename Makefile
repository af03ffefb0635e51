# Two commands on a fresh machine: `make up` runs Helpline, `make test` runs every check.
SHELL := /bin/bash
# uv from PATH, else a private copy in .tools/ (installed by `make install` with pip).
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
export UV_LINK_MODE ?= copy
# Bytecode compiled at install: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every
# process would otherwise compile every module it imports, seconds per service start.
export UV_COMPILE_BYTECODE ?= 1

.PHONY: up test lint typecheck contracts bench-query bench-retrieval bench-cache bench-embedding bench-throughput bench-priority bench-crawl bench-render bench-auth bench-cluster bench-scale bench-soak deploy-check install

install:
	@test -x "$(UV)" || { python3 -m venv .tools && .tools/bin/python -m pip install --quiet uv; }
	$(UV) sync --locked --all-packages
	@.venv/bin/python -m compileall -q libs services cli > /dev/null

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

bench-retrieval: install
	$(UV) run python bench/retrieval_eval.py

bench-cache: install
	$(UV) run python bench/answer_cache.py

bench-embedding: install
	$(UV) run python bench/embedding.py

bench-throughput: install
	$(UV) run python bench/throughput.py

bench-priority: install
	$(UV) run python bench/priority.py

bench-crawl: install
	$(UV) run python bench/crawl.py $(ARGS)

bench-render: install
	$(UV) run python bench/render.py

bench-auth: install
	$(UV) run python bench/auth.py $(ARGS)

bench-cluster: install
	$(UV) run python bench/cluster.py $(ARGS)

bench-scale: install
	$(UV) run python bench/scale.py $(ARGS)

bench-soak: install
	$(UV) run python bench/soak.py $(ARGS)

deploy-check: install
	PATH="$(CURDIR)/.venv/bin:$$PATH" bash deploy/validate.sh
