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
