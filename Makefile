# Two commands on a fresh machine: `make run` (the main tuning job) and `make test`.
# Both create the virtual environment(s) and install the project on first use.
#
# Environments (all installed with uv, which pip bootstraps into .venv):
#   .venv         Python 3.11 (else 3.13, 3.12), newest dependencies: `make run`, the full suite
#   .venv-3.12    Python 3.12, newest dependencies: tests/eeipu and tests/stages
#   .venv-3.13    Python 3.13, newest dependencies: tests/eeipu and tests/stages
#   .venv-oldest  Python 3.11, the LOWEST version of every direct dependency: tests/eeipu,
#                 tests/stages and the in-process CLI tests (checks pyproject's lower bounds)
# Each installs the project with its `dev` and `examples` extras (.venv also `docs`, for the
# site; .venv and .venv-oldest also `kedro`, whose tests/kedro they run); only .venv runs the
# example projects' tests (tests/examples, for examples/) and builds the docs.
# Interpreters are found by tools/find-python (PATH, pyenv, /usr/bin); name one with
# PY=/path/to/python for .venv, PY311, PY312, PY313 for the others. EXTRA_PYTHONS= skips
# 3.12 and 3.13.
#
# torch is not pinned beyond pyproject's range: on Linux x86_64 PyPI serves the CUDA build
# (several GB of NVIDIA libraries; README "Set-up"). UV_TORCH_BACKEND=cpu asks uv for
# PyTorch's CPU build instead, where PyTorch's own index can be reached.
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := hardlink

FIND_PYTHON := tools/find-python
# The main environment prefers 3.11 (the oldest supported) and takes 3.13 or 3.12 without it.
PY ?= $(shell $(FIND_PYTHON) 3.11 3.13 3.12)
PY311 ?= $(shell $(FIND_PYTHON) 3.11)
PY312 ?= $(shell $(FIND_PYTHON) 3.12)
PY313 ?= $(shell $(FIND_PYTHON) 3.13)
EXTRA_PYTHONS ?= 3.12 3.13
UV_VERSION := 0.13.9

VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP := $(VENV)/.installed-stamp
CORE_TESTS := tests/eeipu tests/stages
# Hydra/Prefect at their lowest versions: the CLI's bad-input table runs in process.
OLDEST_TESTS := $(CORE_TESTS) tests/flows/test_bad_input.py tests/kedro

.PHONY: run test test-fast test-extended test-main test-main-extended test-oldest $(addprefix test-,$(EXTRA_PYTHONS)) lint install \
	clean browser postgres server worker task-worker docs docs-serve

# Debian's Chromium and ChromeDriver for the browser test (tests/flows/test_server_ui.py).
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Stop with tools/find-python's message when an interpreter is missing.
need_python = @test -n "$(1)" || { $(FIND_PYTHON) $(2); exit 1; }
show_versions = @$(1)/bin/python -c 'import sys, scipy, botorch, torch; \
	print("python", sys.version.split()[0], "scipy", scipy.__version__, \
	"botorch", botorch.__version__, "torch", torch.__version__)'

$(STAMP): pyproject.toml
	$(call need_python,$(PY),3.11 3.13 3.12)
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(UV) pip install -q --compile-bytecode -p $(BIN)/python -e '.[dev,examples,docs,kedro]'
	touch $(STAMP)

.venv-%/.installed-stamp: pyproject.toml $(STAMP)
	$(call need_python,$(PY$(subst .,,$*)),$*)
	$(UV) venv -q --clear -p $(PY$(subst .,,$*)) .venv-$*
	$(UV) pip install -q --compile-bytecode -p .venv-$*/bin/python -e '.[dev,examples]'
	touch $@

.venv-oldest/.installed-stamp: pyproject.toml $(STAMP)
	$(call need_python,$(PY311),3.11)
	$(UV) venv -q --clear -p $(PY311) .venv-oldest
	$(UV) pip install -q --compile-bytecode -p .venv-oldest/bin/python --resolution lowest-direct -e '.[dev,examples,kedro]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m flows.tune $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Test tiers (docs/development.md, "Test tiers"); CI (.ci/run) runs `test`, then
# `test-extended`, so every test runs there.
#   test-fast      the edit-run loop: the main suite without the slow, browser, PostgreSQL and
#                  extended tests, on two workers; no lint, no other Pythons
#   test           the README's test command: lint, the main suite but its extended tests on
#                  two workers, then on 3.13 and on the oldest dependencies side by side (one
#                  core each; output job by job) the version-sensitive core (MATRIX_QUICK)
#   test-extended  the rest: the extended tests (variants of checks `test` makes: the same
#                  fault on another executor, another signal), then the whole core suites on
#                  3.12, 3.13 and the oldest dependencies side by side
# --durations: the slowest tests in every log, where the suite's time goes. --dist loadgroup
# keeps the PostgreSQL tests on one worker (one PostgreSQL server per run; tests/conftest.py).
XDIST := -n 2 --dist loadgroup
FAST := not slow and not browser and not postgres and not extended
# The optimizer's ask/tell contract, both L-BFGS-B paths and the stages runtime (keys, store,
# S3, Prefect tasks): what a Python or a dependency version changes first.
MATRIX_QUICK := tests/stages tests/eeipu/test_optimizer.py tests/eeipu/test_lbfgs_paths.py
EXTRA_TESTS := $(addprefix test-,$(EXTRA_PYTHONS)) test-oldest
QUICK_TESTS := $(filter-out test-3.12,$(EXTRA_TESTS))
test: test-main
	$(MAKE) --no-print-directory -j2 --output-sync=target $(QUICK_TESTS) QUICK=1

test-extended: test-main-extended
	$(MAKE) --no-print-directory -j3 --output-sync=target $(EXTRA_TESTS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -p no:cacheprovider --durations=15 -m "$(FAST)" $(PYTEST_ARGS)

test-main: lint browser postgres
	$(BIN)/python -m pytest $(XDIST) --durations=30 -m "not extended" $(PYTEST_ARGS)

test-main-extended: $(STAMP) browser postgres
	$(BIN)/python -m pytest $(XDIST) -p no:cacheprovider --durations=30 -m extended $(PYTEST_ARGS)

# test-NAME: the test paths $(2) in .venv-NAME, after a line naming the versions installed;
# with QUICK=1 only $(3), and not the slow or extended ones among them.
define venv_tests
test-$(1): .venv-$(1)/.installed-stamp
	$$(call show_versions,.venv-$(1))
	.venv-$(1)/bin/python -m pytest -p no:cacheprovider --durations=10 \
		$$(if $$(QUICK),-m "not slow and not extended" $(3),$(2)) $$(PYTEST_ARGS)
endef
$(foreach v,$(EXTRA_PYTHONS),$(eval $(call venv_tests,$(v),$(CORE_TESTS),$(MATRIX_QUICK))))
$(eval $(call venv_tests,oldest,$(OLDEST_TESTS),$(MATRIX_QUICK) tests/flows/test_bad_input.py))

# The documentation site (mkdocs.yml) into site/, failing on any warning (a broken link, a
# public name without a docstring); docs-serve rebuilds it on every change, on
# http://127.0.0.1:8000. NO_MKDOCS_2_WARNING: Material's banner about its successor.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8000

browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi

# Debian's PostgreSQL for `make server DB=postgres` and the tests with two workers
# (tests/flows/test_parallel.py), which both run it with tools/pg-prefect.
postgres:
	@tools/pg-prefect --bindir >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql; }

# A local Prefect server and UI on http://127.0.0.1:4200 (set PREFECT_API_URL to use it). Its
# database: SQLite in PREFECT_HOME (default ~/.prefect), or with DB=postgres a PostgreSQL
# cluster of its own in PG_DATA on 127.0.0.1:PG_PORT, for several workers (docs/parallel.md).
DB ?= sqlite
PG_DATA ?= .prefect-pg
PG_PORT ?= 5433
server: $(STAMP) $(if $(filter postgres,$(DB)),postgres)
	$(if $(filter-out sqlite postgres,$(DB)),$(error DB must be sqlite or postgres, but got '$(DB)'))
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(if $(filter postgres,$(DB)),tools/pg-prefect $(PG_DATA) $(PG_PORT)) \
		$(BIN)/prefect server start --host 127.0.0.1 --port 4200

# A process worker for parallel studies (run it in as many terminals/machines as you like).
worker: $(STAMP)
	$(BIN)/prefect worker start --pool $(or $(POOL),eeipu) --type process --limit 1

# A warm worker for executor=task_workers: one long-lived process runs trial after trial.
task-worker: $(STAMP)
	$(BIN)/eeipu worker --limit $(or $(LIMIT),1)

clean:
	rm -rf $(VENV) .venv-3.* .venv-oldest outputs multirun .eeipu site
