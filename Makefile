# The two commands of the README: `make demo` (set up and run the demo) and `make test` (set up and run the tests).
# Every step is idempotent: run again, it reuses what exists.
PYTHON ?= python3
VENV := .venv
HUB := $(VENV)/bin/hub

.PHONY: demo test setup engines demo-models system lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	HUB_STRICT=1 $(VENV)/bin/pytest -ra
