# The two commands a fresh machine needs (each creates .venv when missing):
#   make demo   set up, then run a bundled example end to end (issue -> patch -> tests pass)
#   make test   set up, then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
# CPU machines take the CPU wheel; GPU users: make TORCH='torch' (or install torch first).
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/v4coder demo wordstats
	$(BIN)/v4coder demo intervals

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check app agent model tools tests

clean:
	rm -rf $(VENV) .pytest_cache
