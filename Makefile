# driftrec — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DRIFTREC := $(VENV)/bin/driftrec

.PHONY: help install demo test test-unit test-integration lint settings-doc stop bench bench-write-path chaos clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	@touch $@

# The reader's compiled front (online/native, `reader_native`), installed next to the venv's Python.
$(VENV)/bin/driftrec-reader: $(VENV)/.installed online/native/Cargo.toml online/native/Cargo.lock $(wildcard online/native/src/*.rs online/native/src/*/*.rs)
	cargo install --quiet --locked --path online/native --root $(VENV) --bin driftrec-reader --force

install: $(VENV)/.installed $(VENV)/bin/driftrec-reader ## Create .venv and install driftrec with every extra and the reader's compiled front

demo: install ## Live demo: Kafka + Redis + worker + reader, clicks streamed, recommendations printed
	$(DRIFTREC) demo

test: install ## The whole suite: unit tests, then integration tests on real Kafka and Redis it starts
	$(PY) -m pytest -q -rs -p no:cacheprovider tests

test-unit: install ## Unit tests only (no I/O)
	$(PY) -m pytest -q tests/unit

test-integration: install ## Integration tests only
	$(PY) -m pytest -q tests/integration

# ruff does not walk into the links driftrec/streams, driftrec/models and driftrec/online, so the
# product's folders are named; mypy follows them and checks each module once, as driftrec.*.
lint: install ## ruff + mypy
	$(VENV)/bin/ruff check driftrec streams models online tests benchmarks tools
	$(VENV)/bin/mypy

settings-doc: install ## Regenerate docs/settings.md from driftrec/settings.py (a unit test checks it is current)
	$(PY) tools/gen_settings_doc.py

stop: ## Stop the local Kafka and Redis
	$(DRIFTREC) stack down

bench: install ## The whole system at the defaults: worker, freshness, Redis stalls, reader open-loop (benchmarks/results/system.json)
	$(PY) benchmarks/system.py

bench-write-path: install ## Write path alone: Kafka -> worker -> Redis (benchmarks/results/write_path.json)
	$(PY) benchmarks/write_path.py

chaos: install ## Chaos suite: kill -9 worker/Redis, stop Kafka during a 100k replay + poison flood (benchmarks/results/chaos.json)
	$(PY) benchmarks/chaos.py

clean: stop ## Stop the stack and remove its data
	rm -rf .driftrec .driftrec-test
