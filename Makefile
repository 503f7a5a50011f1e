# Two commands do all set-up on a fresh clone: `make demo` runs the main job, `make test` the tests.
# Each creates .venv on first use. TORCH pins the CPU build that CI uses; override it for a GPU
# machine, e.g. `make demo TORCH=torch`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-quick lint bench cli-index readme clean

$(BIN)/reslab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/reslab

demo: $(BIN)/reslab
	$(BIN)/reslab degradation

# The tests in parallel, one pytest-xdist worker per CPU this process may use (tests/conftest.py
# counts them under an affinity mask or a cgroup quota): each test process keeps torch to one
# intra-op thread, so serial `pytest` leaves all but one core idle, and a worker per core fills
# them without oversubscribing much — many tests start subprocesses (studies, torchrun, fault
# injection) that take a core or two of their own for a while, and a second worker per core
# would only add memory and contention. `loadscope` runs each test module in one worker, so its
# module-scoped fixtures are built once and the Ray and notebook modules stay serial
# (tests/conftest.py). 2 cores: -n 2; 16 cores: -n 16, the longest tests then set the time.
# PYTEST_XDIST_AUTO_NUM_WORKERS=N picks another count; `pytest -q` alone still runs serially.
XDIST := -n auto --dist loadscope

test: $(BIN)/reslab lint
	$(BIN)/pytest -q $(XDIST)

# For while you work: the unit tests of the rooms below the trainer and the studies (blocks,
# models, measure, data, report, weights, ...), none marked slow, no lint, in parallel as
# above. `make test`, which CI runs, runs everything.
QUICK := tests/blocks tests/models tests/measure tests/data tests/report tests/scripts \
	tests/test_package.py tests/test_fileio.py tests/test_weights.py tests/test_explain.py \
	tests/test_security.py
test-quick: $(BIN)/reslab
	$(BIN)/pytest -q $(XDIST) -m "not slow" $(QUICK)

lint: $(BIN)/reslab
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python scripts/check_limits.py

bench: $(BIN)/reslab
	$(BIN)/python benchmarks/bench_cpu.py

# After changing a flag, a help text, a study or a model: the command line's stored declarations.
cli-index: $(BIN)/reslab
	$(BIN)/python scripts/cli_index.py

# The README's blocks from the program: the models table, and the demo's output once it ran.
readme: $(BIN)/reslab
	$(BIN)/python scripts/readme.py $(if $(wildcard runs/degradation/results.json),--demo runs/degradation/results.json)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
