# paddle_qwen2 developer entry points. `make test` is what CI runs (.ci/run).
PY     ?= python3
VENV   ?= .venv
VENV26 ?= .venv26

# CPU threads for test/bench runs when not already set. MKL_DEBUG_CPU_TYPE is chosen per CPU by
# paddle_qwen2.runtime.configure_cpu_threads(), which the tests, benchmarks, examples and CLI call before paddle loads.
OMP_NUM_THREADS ?= 2
export OMP_NUM_THREADS

# `make test` / `make test-paddle26` run pytest in TEST_WORKERS pytest-xdist processes, each given whole test files
# (files holding `slow` tests first: tests/conftest.py) and TEST_THREADS CPU threads. One process on both cores:
# `make test TEST_WORKERS=0 TEST_THREADS=2`.
TEST_WORKERS ?= 2
TEST_THREADS ?= 1
PYTEST_XDIST = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: all venv venv26 lint format test test-fast test-paddle26 demo bench clean distclean docs

all: test

venv: $(VENV)/.installed
venv26: $(VENV26)/.installed

# Main venv (paddlepaddle 3.3.1). requirements-test.txt is installed second on
# purpose: it overrides huggingface_hub for transformers (see the file's header).
$(VENV)/.installed: requirements.txt requirements-test.txt requirements-docs.txt pyproject.toml setup.py paddle_qwen2/conversion/_transpose.c
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -r requirements.txt
	$(VENV)/bin/python -m pip install -r requirements-test.txt
	$(VENV)/bin/python -m pip install -r requirements-docs.txt
	$(VENV)/bin/python -m pip install -e . --no-deps
	touch $@

# Parity venv (paddlepaddle 2.6.2, otherwise the same pins).
$(VENV26)/.installed: requirements-paddle26.txt requirements-test.txt pyproject.toml setup.py paddle_qwen2/conversion/_transpose.c
	test -x $(VENV26)/bin/python || $(PY) -m venv $(VENV26)
	$(VENV26)/bin/python -m pip install -r requirements-paddle26.txt
	$(VENV26)/bin/python -m pip install -r requirements-test.txt
	$(VENV26)/bin/python -m pip install -e . --no-deps
	touch $@

# ruff (pinned in requirements-test.txt, configured in pyproject.toml): the same checks as .pre-commit-config.yaml.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Apply ruff's fixes and formatting in place.
format: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(MAKE) docs
	OMP_NUM_THREADS=$(TEST_THREADS) $(VENV)/bin/python -m pytest -q $(PYTEST_XDIST) tests
	$(MAKE) test-paddle26

# The docs site (mkdocs.yml, docs/): a strict build fails on any warning (broken link, missing page, hook error).
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

test-paddle26: $(VENV26)/.installed
	OMP_NUM_THREADS=$(TEST_THREADS) $(VENV26)/bin/python -m pytest -q $(PYTEST_XDIST) -m paddle26 tests

# The quick loop while editing: paddle 3.3.1 only, no lint, no `slow` tests (multi-process and long runs; `make
# test` runs them).
test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -m "not slow" tests

demo: $(VENV)/.installed
	$(VENV)/bin/python examples/demo.py

bench: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/run_all.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -path ./$(VENV26) -prune -o \
	    -name __pycache__ -type d -prune -exec rm -rf {} +

# Also removes both venvs (they are rebuilt from the pinned requirements on demand).
distclean: clean
	rm -rf $(VENV) $(VENV26)
