# Two commands set everything up: `make demo` and `make test`. Both build .venv themselves.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint run serve bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	@echo 'setting up .venv (first run only: a few minutes)…'
	@$(BIN)/python -m pip install -qq --upgrade pip
	@$(BIN)/python -m pip install -qq -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@$(BIN)/monitor demo

test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	@$(BIN)/ruff check src flows tests bench
	@$(BIN)/mypy

run: $(STAMP)
	@$(BIN)/monitor run

serve: $(STAMP)
	@$(BIN)/monitor serve

bench: $(STAMP)
	@$(BIN)/python -m pip install -qq -e '.[bench]'
	@$(BIN)/python bench/pipeline.py --quick

clean:
	rm -rf $(VENV) data/demo* .pytest_cache
