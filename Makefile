# vlmlab: `make demo` trains the demo curriculum, `make test` runs the tests. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format clean

install: $(STAMP)

# The virtual environment, rebuilt when the dependencies change. constraints.txt pins the tested
# versions (torch and torchvision as a matching pair).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vlmlab-train experiment=demo

# In parallel worker processes (pytest-xdist), one test file per worker at a time: a file's fixtures are built once.
# Files are handed out in collection order, the long end-to-end ones (marked slow) first (tests/conftest.py), not
# xdist's default of the files with the most tests first; the 20 slowest tests are listed at the end.
test: $(STAMP)
	$(BIN)/pytest -n auto --dist loadfile --no-loadscope-reorder --durations=20

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP)
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

clean:
	rm -rf $(VENV) outputs multirun
