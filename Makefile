# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-slow lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m vistok.demo --out runs/demo

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest -q

# The minutes-long checks CI leaves out (paper-size configs' training step, real LLM runs): pytest -m slow
test-slow: $(VENV)/.installed
	$(BIN)/pytest -q -m slow

# Lint only: the code is laid out by hand (compact, 120 columns); `ruff format` is not used.
lint: $(VENV)/.installed
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache .ruff_cache
