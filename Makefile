# Two commands on a fresh machine: `make run` (the main tuning job) and `make test`.
# Both create the virtual environment and install the project on first use.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint install clean browser server worker

# Debian's Chromium and ChromeDriver for the browser test (tests/flows/test_server_ui.py).
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "eeipu needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m flows.tune $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

browser:
	@if [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; \
	fi

# A local Prefect server and UI on http://127.0.0.1:4200 (set PREFECT_API_URL to use it).
server: $(STAMP)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/prefect server start --host 127.0.0.1 --port 4200

# A process worker for parallel studies (run it in as many terminals/machines as you like).
worker: $(STAMP)
	$(BIN)/prefect worker start --pool $(or $(POOL),eeipu) --type process --limit 1

clean:
	rm -rf $(VENV) outputs multirun .eeipu
