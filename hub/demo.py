"""`hub demo prepare`: make the demo models of models.demo.toml under `<state_dir>/models/`, each by a converter
module run in its engine's environment (`python -m demo_models.smollm2 OUTDIR` in the vllm environment,
`python -m demo_models.tiny_sd OUTDIR` in the diffusers environment, then tiny-sd's LoRA adapters from it, and so
on). The converters are idempotent themselves.

`hub demo prepare --families` makes one tiny random pipeline per image model family instead (Stable Diffusion 1.5,
SDXL, SD3.5, FLUX.1 dev and Kontext, FLUX.2, Qwen-Image and its edit models), each under
`<state_dir>/models/families/<family>`, for trying every family's code path without a download
(models.families.toml serves them all)."""

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
    args: tuple[str, ...] = ()  # given to the converter before OUTDIR; "{models}" is the folder the models go to


DEMO_MODELS = (
    DemoModel("smollm2-135m-instruct", "vllm", "demo_models.smollm2"),
    # a LoRA adapter of the one above (made from it: after it), with peft, which the vllm environment lacks
    DemoModel("smollm2-lora", "diffusers", "demo_models.smollm2_lora", ("--base", "{models}/smollm2-135m-instruct")),
    DemoModel("tiny-sd", "diffusers", "demo_models.tiny_sd"),
    # tiny-sd's two LoRA adapters (pixel, ink), made from it: after it
    DemoModel("tiny-lora", "diffusers", "demo_models.tiny_lora", ("--base", "{models}/tiny-sd")),
    DemoModel("all-minilm-l6-v2", "vllm", "demo_models.minilm"),
    DemoModel("tiny-vlm", "vllm", "demo_models.tiny_vlm"),
)



def _family(name: str, module: str) -> DemoModel:
    return DemoModel(name, "diffusers", module, ("--family", name))


# One tiny random pipeline per image model family, built from configs (the converters' docstrings say how)
FAMILIES = (
    _family("sd1.5", "demo_models.family_sd"),
    _family("sdxl", "demo_models.family_sd"),
    _family("sd3.5", "demo_models.family_sd"),
    _family("flux.1-dev", "demo_models.family_flux"),
    _family("flux.1-kontext", "demo_models.family_flux"),
    _family("flux.2-klein", "demo_models.family_flux"),
    _family("qwen-image", "demo_models.family_qwen"),
    _family("qwen-image-edit", "demo_models.family_qwen"),
    _family("qwen-image-edit-plus", "demo_models.family_qwen"),
)


def prepare(reg: Registry, names: list[str] | None = None, progress: Callable[[str], None] = print,
            families: bool = False) -> list[str]:
    """Make the demo models (all, or those named), or with `families` the image family pipelines (all, or those
    named); returns the folders made or found. Raises SetupError."""
    models, where = (FAMILIES, reg.state_dir / "models" / "families") if families else \
        (DEMO_MODELS, reg.state_dir / "models")
    known = {m.name: m for m in models}
    for n in names or []:
        if n not in known:
            what = "image model family" if families else "demo model"
            raise SetupError(f"unknown {what} {n!r} (valid: {', '.join(known)})")
    done = []
    for m in (known[n] for n in names) if names else models:
        module_file = ROOT / (m.module.replace(".", "/") + ".py")
        if not module_file.exists():
            progress(f"{m.name}: skipped, this checkout has no {m.module} yet")
            continue
        python = reg.envs_dir / m.env / "bin" / "python"
        if not python.exists():
            raise SetupError(f"{m.name}: the {m.env} engine environment is missing ({python}): "
                             f"run `hub engines setup {m.env}` first")
        out = where / m.name
        progress(f"{m.name}: preparing {out} ...")
        t0 = time.monotonic()
        args = [a.replace("{models}", str(where)) for a in m.args]
        proc = subprocess.run([str(python), "-m", m.module, *args, str(out)], cwd=ROOT, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()] or ["no output"]
            raise SetupError(f"{m.name}: {m.module} failed (exit {proc.returncode}): {lines[-1][:300]}")
        last = (proc.stdout.strip().splitlines() or ["done"])[-1]
        progress(f"{m.name}: {last} ({time.monotonic() - t0:.0f}s)")
        done.append(str(out))
    return done
