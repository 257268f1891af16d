# The two commands a newcomer needs (see README):
#   make demo   set everything up and generate chapter 1, page 1 on the bundled demo model
#   make test   set everything up and run the checks and the tests
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup comfyui demo serve test lint bench fault-injection clean-demo

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

test: setup comfyui lint
	$(BIN)/python -m pytest

bench: setup comfyui
	$(BIN)/python scripts/bench_overhead.py

# Ten pages through a real plasmad and ComfyUI, both killed at seeded random moments; prints pages
# done / failed / duplicates / leftovers (goal 10 / 0 / 0 / 0). Minutes, not a test.
fault-injection: setup comfyui
	$(BIN)/python scripts/fault_injection.py
