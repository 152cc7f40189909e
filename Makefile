# Two commands for a newcomer: `make run` and `make test` (both install first).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Extra pip arguments for torch, e.g. a CPU-only wheel index on a machine with CUDA drivers,
# so the ONNX export never pulls a multi-GB CUDA build.
TORCH_PIP_ARGS ?=

.PHONY: install run index dev test lint bench lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	# CPU torch first: with it in place, the `torch==2.13.0` requirement installs nothing more.
	$(BIN)/pip install -q --disable-pip-version-check "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e ".[dev]"
	touch $@

run: install
	$(BIN)/cia index
	$(BIN)/cia dev

index: install
	$(BIN)/cia index

dev: install
	$(BIN)/cia dev

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check cia_assets cia_assets_tests
	$(BIN)/ruff format --check cia_assets cia_assets_tests
	$(BIN)/mypy

bench: install
	$(BIN)/python -m cia_assets_tests.bench.bench_indexing

# Re-pin every dependency after changing pyproject.toml.
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^cia-assets' > requirements.lock

clean:
	rm -rf .cia $(VENV)
