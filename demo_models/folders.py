"""What the demo-model converters share: their error, the marker of a finished conversion, making a folder in a
temporary place and renaming it into place (so an interrupted run leaves nothing half-made), the command line, and
the byte-level tokenizer of the random-weight models. Only the standard library at import time: engine side."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MARKER = ".hub-converted.json"


class ConvertError(Exception):
    """The conversion or build cannot run; the message says what to do."""


def check_out(out: Path, done: Path) -> bool:
    """True when `out` already holds a finished model (its `done` file); ConvertError for a non-empty folder that
    does not, so that nobody's files are overwritten."""
    if done.exists():
        return True
    if out.exists() and any(out.iterdir()):
        raise ConvertError(f"{out} exists but is not a finished conversion: remove it and run again")
    return False


def make_into(out: Path, build: Callable[[Path], None], marker: dict[str, Any] | None = None) -> None:
    """Run build(folder) in a temporary folder beside `out`, make its files readable by every user (engines in
    containers may run as another one; safetensors writes 0600), write the marker, and rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        build(part)
        for f in [part, *part.rglob("*")]:
            f.chmod(0o755 if f.is_dir() else 0o644)
        if marker is not None:
            (part / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty: check_out made sure
        part.rename(out)
    finally:
        shutil.rmtree(part, ignore_errors=True)


def write_pipeline(out: Path, build: Callable[[Path], None], what: str) -> str:
    """A Diffusers pipeline folder built into `out` unless it holds one (model_index.json); a folder left
    half-written by an interrupted earlier run is replaced. Its images are noise (random weights)."""
    if (out / "model_index.json").exists():
        return f"{out}: already there, left as it is"
    if out.exists():
        shutil.rmtree(out)
    make_into(out, build)
    return f"{out}: {what} written (its images are noise)"


def cli(name: str, convert: Callable[[Path], str], outdir_help: str, argv: list[str] | None = None) -> int:
    """`python -m demo_models.<name> OUTDIR`: print what convert(OUTDIR) did, or the error and exit 1."""
    module = sys.modules.get(f"demo_models.{name}") or sys.modules.get("__main__")
    p = argparse.ArgumentParser(prog=f"python -m demo_models.{name}",
                                description=((module and module.__doc__) or name).splitlines()[0])
    p.add_argument("outdir", type=Path, help=outdir_help)
    args = p.parse_args(argv)
    try:
        print(convert(args.outdir.resolve()), flush=True)
    except ConvertError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 1
    return 0


def family_cli(name: str, families: Iterable[str], convert: Callable[[str, Path], str],
               argv: list[str] | None = None) -> int:
    """`python -m demo_models.<name> --family NAME OUTDIR` of a module that builds several families: print what
    convert(family, OUTDIR) did, or the error and exit 1."""
    module = sys.modules.get(f"demo_models.{name}") or sys.modules.get("__main__")
    p = argparse.ArgumentParser(prog=f"python -m demo_models.{name}",
                                description=((module and module.__doc__) or name).splitlines()[0])
    p.add_argument("--family", required=True, choices=sorted(families), help="which family's pipeline to build")
    p.add_argument("outdir", type=Path, help="folder to write (skipped if it already holds model_index.json)")
    args = p.parse_args(argv)
    try:
        print(convert(args.family, args.outdir.resolve()), flush=True)
    except ConvertError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 1
    return 0


def byte_unicode() -> list[str]:
    """The byte-to-unicode table of byte-level BPE (GPT-2, CLIP, Qwen): one printable character per byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs, strict=True))]


def byte_level_bpe(specials: list[str]) -> Any:
    """A `tokenizers` byte-level BPE with one token per byte (no merges) and `specials` added after them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(byte_unicode())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    return tok
