# Two commands work on a fresh machine: `make demo` and `make test` (each sets itself up).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned here (the CPU wheel); pyproject.toml keeps a range for users.
TORCH := torch==2.13.0

.PHONY: venv demo test test-fast docs clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/activate

venv: $(BIN)/activate

demo: venv
	$(BIN)/python -m pyro_svae.demo --out demo_output

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# The documentation site, built strictly (a warning fails it) into site/; the tutorials run with
# tiny settings. The model graph needs graphviz's `dot` (e.g. apt install graphviz), else a note.
$(VENV)/.docs: $(BIN)/activate
	$(BIN)/pip install --quiet -e ".[docs]"
	touch $(VENV)/.docs

docs: $(VENV)/.docs
	PYRO_SVAE_TUTORIAL_FAST=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) demo_output .pytest_cache site
