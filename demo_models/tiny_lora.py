"""Write two tiny LoRA adapters ("pixel" and "ink") for the tiny Stable Diffusion pipeline, made with peft.

    python -m demo_models.tiny_lora [--base DIR] OUTDIR

Each adapter is a peft LoraConfig injected into the pipeline's UNet (rank 4 on its attention projections) with
seeded random A and B weights (B non-zero: peft starts B at zero, which would change no image), saved in the Diffusers
LoRA format (`StableDiffusionPipeline.save_lora_weights`: OUTDIR/<name>/pytorch_lora_weights.safetensors), which
`load_lora_weights` reads as a real adapter from a hub or Civitai would be read. Their images are as much noise as the
base's, but each is a different noise: enough to tell that an adapter is applied, switched or left off. The base
(default: the tiny-sd folder beside OUTDIR, where `hub demo prepare` puts it) gives the UNet's layout. Runs in the
diffusers engine environment (torch, diffusers, peft); a folder that already holds both adapters is left as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from demo_models.folders import ConvertError, check_out, make_into

ADAPTERS = {"pixel": 1, "ink": 2}  # name -> seed
RANK = 4
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
B_STD = 0.5  # the spread of the B weights: large enough that an adapter visibly changes the tiny model's images
WEIGHTS = "pytorch_lora_weights.safetensors"


def build_adapter(base: Path, seed: int, out: Path) -> None:
    """One adapter for the UNet of `base`, seeded, saved to `out` in the Diffusers LoRA format."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGETS))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, B_STD)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)


def write_adapters(base: Path, out: Path) -> str:
    """Both adapters in `out` (one folder each) unless they are there already."""
    if not (base / "unet" / "config.json").exists():
        raise ConvertError(f"{base} holds no tiny Stable Diffusion pipeline (no unet/config.json): run "
                           "`python -m demo_models.tiny_sd` (or `hub demo prepare tiny-sd`) first, or pass --base")
    if check_out(out, out / "done"):
        return f"{out}: already there, left as it is"

    def build(folder: Path) -> None:
        for name, seed in ADAPTERS.items():
            build_adapter(base, seed, folder / name)
        (folder / "done").write_text(f"LoRA adapters {', '.join(ADAPTERS)} for {base.name}\n")

    make_into(out, build)
    return f"{out}: tiny LoRA adapters {', '.join(ADAPTERS)} written (rank {RANK}, random weights)"


def main(argv: list[str] | None = None) -> int:
    """Write the adapters to OUTDIR unless they are there."""
    p = argparse.ArgumentParser(prog="python -m demo_models.tiny_lora", description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, help="the tiny Stable Diffusion pipeline (default: OUTDIR/../tiny-sd)")
    p.add_argument("outdir", type=Path, help="folder to write (skipped if it already holds the adapters)")
    a = p.parse_args(argv)
    out = a.outdir.resolve()
    try:
        print(write_adapters((a.base or out.parent / "tiny-sd").resolve(), out), flush=True)
    except ConvertError as err:
        print(f"tiny_lora: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
