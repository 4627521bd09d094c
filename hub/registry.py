"""Loading a registry: parse it (hub/config.py), then let each model's engine check its own keys and `args`.

This is the one place that joins the registry's shapes and the engines: config.py stays a leaf that imports no
engine, and engines import config for the shapes they read.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hub.config import Registry, format_validation_error
from hub.engines import available_engines, get_engine
from hub.errors import ConfigError
from hub.runtimes import rayplace


def engine_problems(reg: Registry) -> list[str]:
    """Unknown engine names, and what each model's engine finds wrong with its keys and args."""
    names = available_engines()
    out: list[str] = []
    for mid, m in reg.models.items():
        at = f"models.{mid}"
        if m.engine not in names:
            out.append(f"{at}.engine: unknown engine {m.engine!r} (valid: {', '.join(names)})")
            continue
        out.extend(f"{at}.{p}" for p in get_engine(m.engine).problems(m))
    return out


def parse_registry(data: dict[str, Any], path: Path | None = None) -> Registry:
    """A validated Registry from parsed TOML data, or a ConfigError listing every problem."""
    source = str(path) if path else "registry"
    try:
        reg = Registry.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err), source) from None
    reg.path = path.resolve() if path else None
    if problems := engine_problems(reg) + reg.problems() + rayplace.problems(reg):
        raise ConfigError(problems, source)
    return reg


def load_registry(path: str | Path) -> Registry:
    """Read and validate a registry file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError([f"cannot read the registry: {err.strerror}"], str(p)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"invalid TOML: {err}"], str(p)) from None
    return parse_registry(data, p)
