# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv themselves.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-stop test test-fast test-slow lint bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps histomicstk==1.4.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python tools/dsa_demo.py

demo-stop:
	$(PY) tools/dsa_stack.py down

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest tests -m slow

lint: $(STAMP)
	$(BIN)/ruff check lnassist tests benchmarks cli tools plugin

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_escnn.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
