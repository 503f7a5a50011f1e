# Two commands do all set-up on a fresh clone: `make demo` runs the main job, `make test` the tests.
# Each creates .venv on first use. TORCH pins the CPU build that CI uses; override it for a GPU
# machine, e.g. `make demo TORCH=torch`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-quick lint bench clean

$(BIN)/reslab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/reslab

demo: $(BIN)/reslab
	$(BIN)/reslab degradation

test: $(BIN)/reslab lint
	$(BIN)/pytest -q

# The tests not marked slow (no fault-injection processes, no long runs), no lint: for while you
# work. `make test`, which CI runs, runs everything.
test-quick: $(BIN)/reslab
	$(BIN)/pytest -q -m "not slow"

lint: $(BIN)/reslab
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python scripts/check_limits.py

bench: $(BIN)/reslab
	$(BIN)/python benchmarks/bench_cpu.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
