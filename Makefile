# The two commands a newcomer needs (see README):
#   make demo   set everything up and generate chapter 1, page 1 on the bundled demo model
#   make test   set everything up and run the checks and the tests
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup comfyui demo serve test lint bench bench-queue fault-injection clean-demo ts-client ts-types

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# ComfyUI 0.3.75 (CPU) and the demo model in .demo/, in a venv of their own.
comfyui:
	scripts/setup-comfyui.sh

demo: setup comfyui
	scripts/demo.sh

# plasmad in the foreground on the demo's ComfyUI (managed) and model, for plasmactl in another
# terminal; Ctrl-C or `plasmactl shutdown` stops it.
serve: setup comfyui
	scripts/serve.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: setup comfyui lint ts-client
	$(BIN)/python -m pytest

# --- the TypeScript client (clients/typescript): the pipeline's typed view of the API ---------------
TS := clients/typescript

# npm ci (from package-lock.json), then tsc --strict; tests/test_ts_client.py drives the result.
ts-client: $(TS)/node_modules/.installed
	cd $(TS) && npm run --silent build

$(TS)/node_modules/.installed: $(TS)/package.json $(TS)/package-lock.json
	cd $(TS) && npm ci --no-audit --no-fund
	touch $@

# After an API change: the spec snapshot and the types generated from it (commit both).
ts-types: setup ts-client
	$(BIN)/python scripts/openapi.py $(TS)/openapi.json
	cd $(TS) && npm run --silent generate && npm run --silent build

bench: setup comfyui
	$(BIN)/python scripts/bench_overhead.py

# A chapter-sized queue costs what a small one does: lists linear in N, a job's GET flat, p99 of
# GETs while long lists are served (issue 10). No ComfyUI needed.
bench-queue: setup
	$(BIN)/python scripts/bench_queue.py

# Ten pages through a real plasmad and ComfyUI, both killed at seeded random moments; prints pages
# done / failed / duplicates / leftovers (goal 10 / 0 / 0 / 0). Minutes, not a test.
fault-injection: setup comfyui
	$(BIN)/python scripts/fault_injection.py
