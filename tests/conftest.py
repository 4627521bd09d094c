"""Shared fixtures: a real `hub serve` process started from a registry text, and the test responder command.

Tiers that need something installed (engine environments, Chromium, Docker) skip when it is missing, except under
HUB_STRICT=1 (set by `make test` and CI), where a missing prerequisite fails the test instead.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from hub.procs import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
RESPONDER = ROOT / "tests" / "responder.py"
STRICT = os.environ.get("HUB_STRICT") == "1"
# Engine environments and demo models are made once (by `make test`) and shared by every hub a test starts.
ENVS_DIR = Path(os.environ.get("HUB_ENVS_DIR") or ROOT / ".hub" / "envs")
DEMO_MODELS = Path(os.environ.get("HUB_DEMO_MODELS") or ROOT / ".hub" / "models")
# engine environments whose Diffusers has torchvision (Qwen2-VL's processor needs it): the diffusers-cuda lock
VISION_ENVS_DIR = Path(os.environ.get("HUB_VISION_ENVS_DIR") or ROOT / ".hub" / "envs-cuda")
# What hub/config.py logs when a registry puts an engine key where earlier registries did (the model's table):
# the tests' registries use the current keys (args.command), and only tests marked `legacy_keys` try the old ones.
LEGACY_KEYS = "belongs in the model's args table now"


def require(ok: bool, why: str) -> None:
    """Skip the test when a prerequisite is missing; under HUB_STRICT=1 fail instead."""
    if not ok:
        if STRICT:
            pytest.fail(f"prerequisite missing (HUB_STRICT=1): {why}")
        pytest.skip(why)


def wait_for(cond: Callable[[], object], what: str, timeout: float = 30, every: float = 0.05) -> None:
    """Poll until cond() is true; fail naming `what` if it is not within `timeout` seconds (a deadline, not a
    guess at how long something takes: on a slow machine the wait is longer, never the outcome different)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(every)


def responder_command(*extra: str) -> str:
    """The TOML array that runs the test responder as a `command` engine."""
    parts = [sys.executable, str(RESPONDER), "--port", "{port}", *extra]
    return "[" + ", ".join(f'"{p}"' for p in parts) + "]"


@dataclass
class HubProcess:
    """A running `hub serve`."""

    url: str
    proc: subprocess.Popen
    config: Path
    state_dir: Path
    log: Path

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def engine_procs(self) -> list[psutil.Process]:
        """Every process below the hub (its engines and their children)."""
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def engine_pids(self) -> list[int]:
        """Pids of every process below the hub (its engines and their children)."""
        return [p.pid for p in self.engine_procs()]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the `hub` CLI against this hub."""
        return subprocess.run([sys.executable, "-m", "hub.cli", *args, "--url", self.url], capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "HUB_URL": ""})

    def models(self, headers: dict[str, str] | None = None) -> dict[str, dict]:
        """GET /hub/models as {id: entry}."""
        r = httpx.get(self.url + "/hub/models", headers=headers or {}, timeout=10)
        r.raise_for_status()
        return {m["id"]: m for m in r.json()["data"]}

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the hub and wait for it (and so its engines) to exit."""
        stop_process(self.proc, timeout, group=False)

    def stop_leaving_nothing(self, timeout: float = 30) -> None:
        """Stop the hub and assert that none of its engine processes outlived it (an engine's own children, killed
        with its process group as it exits, are given up to `timeout` seconds to finish dying)."""
        procs = self.engine_procs()
        self.stop()
        left = still_running(procs, timeout)
        assert not left, f"engine processes left after hub shutdown: {left}"


def still_running(procs: list[psutil.Process], timeout: float = 30) -> list[int]:
    """Wait up to `timeout` seconds for `procs` to exit; the pids of those still running then. A zombie has exited
    (only its parent has not reaped it yet); a pid now used by another process is not the one that was asked for."""
    def running() -> list[int]:
        out = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
        return out

    deadline = time.monotonic() + timeout
    while (left := running()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def start_hub(tmp: Path, registry: str, env: dict[str, str] | None = None, ui: bool = False,
              ready_timeout: float = 60, args: tuple[str, ...] = ()) -> HubProcess:
    """Write `registry` (with a [hub] table if it has none) and start `hub serve` on a free port; `args`: more of
    its options (--watch)."""
    port = free_port()
    state = tmp / "state"
    if "[hub]" not in registry:
        registry = "[hub]\n" + registry
    registry = registry.replace("[hub]\n", f'[hub]\nport = {port}\nstate_dir = "{state}"\n', 1)
    cfg = tmp / "models.toml"
    cfg.write_text(registry)
    log = tmp / "hub.log"
    args = [sys.executable, "-m", "hub.cli", "serve", "--config", str(cfg), *args]
    if not ui:
        args.append("--no-ui")
    environ = {**os.environ, "HUB_STATE_DIR": str(state), "HUB_ENVS_DIR": str(ENVS_DIR), **(env or {})}
    proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, env=environ, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hub exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                hub = HubProcess(url, proc, cfg, state, log)
                if LEGACY_KEYS in log.read_text():
                    hub.stop_leaving_nothing()
                    pytest.fail(f"a test registry uses the engine keys of earlier registries (write args.command, "
                                f"args.base_url ...):\n{log.read_text()}")
                return hub
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"hub not up within {ready_timeout}s:\n{log.read_text()}")


@pytest.fixture
def hub_factory(tmp_path: Path) -> Iterator[Callable[..., HubProcess]]:
    """Start hubs from registry texts; each is stopped at the end and must leave no process behind."""
    started: list[HubProcess] = []

    def make(registry: str, **kw) -> HubProcess:
        h = start_hub(tmp_path, registry, **kw)
        started.append(h)
        return h

    yield make
    for h in started:
        h.stop_leaving_nothing()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def _current_registry_keys(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test whose registry is read with engine keys in the model's table, unless it is marked legacy_keys."""
    records = _Records()
    logger = logging.getLogger("hub.config")
    logger.addHandler(records)
    try:
        yield
    finally:
        logger.removeHandler(records)
    old = [m for m in records.messages if LEGACY_KEYS in m]
    if old and request.node.get_closest_marker("legacy_keys") is None:
        pytest.fail(f"the test's registry uses the engine keys of earlier registries (write args.command, "
                    f"args.base_url ...): {old[0]}")


def _starts_a_hub(func: Callable) -> bool:
    """Whether a fixture function starts a real `hub serve` (it calls start_hub, or asks for hub_factory)."""
    try:
        src = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    return "start_hub(" in src or "hub_factory" in src


SERIAL_MARK = "pytest.mark.engine"
BESIDE_MARK = "pytest.mark.beside"
"""Test modules that use SERIAL_MARK run one after another on one pytest-xdist worker (`make test` runs two side by
side): vLLM on CPU takes every core and GBs of memory, so two such modules at once would only slow each other down
(and push their starts past start_timeout). A module that also uses BESIDE_MARK (tiny Diffusers pipelines: light)
is a unit of its own like every other module, run beside them. A module always stays on one worker, so its
module-scoped fixtures start once."""


def _serial(path: str) -> bool:
    with contextlib.suppress(OSError):
        text = (ROOT / path).read_text()
        return SERIAL_MARK in text and BESIDE_MARK not in text
    return False


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """The scheduler of `pytest -n N`: pytest-xdist's per-module one, with every module that _serial finds in a
    single unit. (Its `--dist loadgroup` cannot do this under pytest 9: it renames test ids through a private
    attribute that pytest 9 no longer reads.) The controller sees test ids only, so a module's marker is read from
    its source."""
    from xdist.scheduler import LoadScopeScheduling

    class Tiers(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "engine tier" if _serial(path) else path

    return Tiers(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `serve` every test whose fixtures start a real `hub serve`, or that starts one itself: `-m "not serve"`
    runs what needs no server."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = [d for ds in (info.name2fixturedefs.values() if info else ()) for d in ds]
        if any(_starts_a_hub(d.func) for d in defs) or _starts_a_hub(getattr(item, "function", None)):
            item.add_marker(pytest.mark.serve)
