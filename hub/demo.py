"""`hub demo prepare`: make the demo models of models.demo.toml under `<state_dir>/models/`, each by a converter
module run in its engine's environment (`python -m demo_models.smollm2 OUTDIR` in the vllm environment,
`python -m demo_models.tiny_sd OUTDIR` in the diffusers environment, and so on). The converters are idempotent
themselves."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from hub.config import Registry
from hub.envsetup import ROOT, SetupError


@dataclass(frozen=True)
class DemoModel:
    """A demo model: its folder name, the engine environment that makes it, and the converter module."""

    name: str
    env: str
    module: str


DEMO_MODELS = (
    DemoModel("smollm2-135m-instruct", "vllm", "demo_models.smollm2"),
    DemoModel("tiny-sd", "diffusers", "demo_models.tiny_sd"),
    DemoModel("all-minilm-l6-v2", "vllm", "demo_models.minilm"),
    DemoModel("tiny-vlm", "vllm", "demo_models.tiny_vlm"),
)


def prepare(reg: Registry, names: list[str] | None = None, progress: Callable[[str], None] = print) -> list[str]:
    """Make the demo models (all, or those named); returns the folders made or found. Raises SetupError."""
    known = {m.name: m for m in DEMO_MODELS}
    for n in names or []:
        if n not in known:
            raise SetupError(f"unknown demo model {n!r} (valid: {', '.join(known)})")
    done = []
    for m in (known[n] for n in names) if names else DEMO_MODELS:
        module_file = ROOT / (m.module.replace(".", "/") + ".py")
        if not module_file.exists():
            progress(f"{m.name}: skipped, this checkout has no {m.module} yet")
            continue
        python = reg.envs_dir / m.env / "bin" / "python"
        if not python.exists():
            raise SetupError(f"{m.name}: the {m.env} engine environment is missing ({python}): "
                             f"run `hub engines setup {m.env}` first")
        out = reg.state_dir / "models" / m.name
        progress(f"{m.name}: preparing {out} ...")
        t0 = time.monotonic()
        proc = subprocess.run([str(python), "-m", m.module, str(out)], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()] or ["no output"]
            raise SetupError(f"{m.name}: {m.module} failed (exit {proc.returncode}): {lines[-1][:300]}")
        last = (proc.stdout.strip().splitlines() or ["done"])[-1]
        progress(f"{m.name}: {last} ({time.monotonic() - t0:.0f}s)")
        done.append(str(out))
    return done
