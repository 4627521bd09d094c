"""The demo text LoRA: `python -m demo_models.smollm2_lora --base DIR OUTDIR` makes a tiny LoRA adapter for the demo
chat model (the SmolLM2 folder `demo_models.smollm2` makes) with peft, saved as peft saves adapters
(adapter_config.json and adapter_model.safetensors), which vLLM serves with --enable-lora. Runs in the diffusers
engine environment (it has torch, transformers and peft; the vllm environment has no peft).

The adapter is not trained: rank 8 on q_proj and v_proj (the projections every vLLM LoRA kernel takes), A as peft
initialises it and B drawn from a seeded normal distribution instead of peft's zeros, large enough that greedy
answers differ from the base model's while the text stays readable. The same seed gives the same adapter, so tests
can compare answers. Idempotent like the other converters: a finished folder holds a marker file and is left alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from demo_models.folders import MARKER, ConvertError, check_out, make_into

SEED = 26
RANK = 8
ALPHA = 16
TARGETS = ["q_proj", "v_proj"]
B_STD = 0.1  # B's spread: with alpha/r = 2 greedy answers change (longer, other words) and stay readable


def convert(base: Path, out: Path) -> str:
    """Make the adapter of the model in `base` into `out` unless it is already there; returns what happened."""
    if check_out(out, out / MARKER):
        return f"up to date ({out})"
    if not (base / "config.json").is_file():
        raise ConvertError(f"no model at {base} (no config.json): run `hub demo prepare smollm2-135m-instruct` first")

    def build(part: Path) -> None:
        import torch  # heavy imports only when there is work to do
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, bias="none",
                            task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config)
        gen = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * B_STD)
        # the base is vLLM's --model, never read from here: its folder name, not a path of this machine
        peft_model.peft_config["default"].base_model_name_or_path = base.name
        peft_model.save_pretrained(part, safe_serialization=True)
        (part / "README.md").unlink(missing_ok=True)  # peft's empty model card

    make_into(out, build, {"base": base.name, "seed": SEED, "rank": RANK, "target_modules": TARGETS})
    return f"made a rank-{RANK} LoRA for {base.name} into {out}"


def main(argv: list[str] | None = None) -> int:
    """Command line: make the adapter of --base into OUTDIR."""
    p = argparse.ArgumentParser(prog="python -m demo_models.smollm2_lora", description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="the SmolLM2 folder (demo: "
                                                            "<state_dir>/models/smollm2-135m-instruct)")
    p.add_argument("outdir", type=Path, help="the folder to make (demo: <state_dir>/models/smollm2-lora)")
    args = p.parse_args(argv)
    try:
        print(convert(args.base.resolve(), args.outdir.resolve()), flush=True)
    except ConvertError as err:
        print(f"smollm2_lora: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
