"""What an experiment runs: a grid of models x prompts x settings x repeats, expanded into cells.

A cell's key is a hash of what it asks (model, prompt, swept settings, repeat), not of its place in the grid, so a
resumed run skips exactly the cells it holds, and two runs of one grid line up cell by cell in a diff. An image cell
without a seed gets one derived from its key: it is recorded, so every image can be made again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

GridKind = Literal["text", "image"]
# the row's own columns: a setting may not take one of these names
RESERVED = frozenset({"cell", "model", "prompt", "messages", "prompt_index", "repeat", "answer", "finish_reason",
                      "ttft_s", "total_s", "prompt_tokens", "completion_tokens", "tokens_per_s", "error", "image",
                      "started_at", "recorded_at", "x", "y", "z", "run"})
# what the runner itself gives the openai client: a cell is one streamed answer (or one image)
SDK_OWN = frozenset({"stream", "stream_options", "n", "extra_body", "extra_headers", "extra_query", "timeout",
                     "partial_images"})
# short names people write for the image server's extensions of the Images API
IMAGE_ALIASES = {"steps": "num_inference_steps", "guidance": "guidance_scale", "negative": "negative_prompt"}
Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True)
class Cell:
    """One request of a grid: which model, which prompt, which settings (fixed and swept), which repeat."""

    key: str
    model: str
    prompt_index: int
    prompt: Prompt
    settings: dict[str, Any]
    swept: dict[str, Any]
    repeat: int = 0
    place: dict[str, int] = field(default_factory=dict)  # x, y, z of an X/Y/Z plot's cell

    @property
    def text(self) -> str:
        """The prompt as text: itself, or the last user message's text of a message list."""
        if isinstance(self.prompt, str):
            return self.prompt
        for msg in reversed(self.prompt):
            if msg.get("role") == "user":
                content = msg.get("content")
                if isinstance(content, str):
                    return content
                return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
        return ""


def _plain(v: Any) -> Any:
    """A setting as its key sees it: a whole float is its int (temperature 0 and 0.0 ask the same)."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def cell_key(model: str, prompt: Prompt, swept: dict[str, Any], repeat: int) -> str:
    """A cell's key: what it asks, hashed (stable across runs and across Python processes)."""
    what = json.dumps([model, prompt, sorted(_plain(swept).items()), repeat], sort_keys=True, default=str)
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def _python(value: Any, name: str = "") -> Any:
    """A setting as plain Python: numpy's numbers (a sweep over np.arange) as int and float, which the manifest and
    the request body can hold and which hash to the same cell key as the numbers written by hand. ValueError for NaN
    and infinities, which no JSON body (nor the run's journal) holds."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}: {value} is not a number a request can send (JSON has no NaN nor infinity)")
    if isinstance(value, list | tuple):
        return [_python(v, name) for v in value]
    if isinstance(value, dict):
        return {k: _python(v, name) for k, v in value.items()}
    return value


def key_seed(key: str) -> int:
    """The seed of an image cell that names none: a number derived from its key."""
    return int(key[:8], 16) % (2**31 - 1)


class Grid(BaseModel):
    """A grid of models x prompts x settings x repeats.

    `params` maps a setting to the values to sweep (every combination runs); `fixed` settings go with every cell.
    Settings are the API's own: chat completion parameters for text (temperature, max_tokens, top_p, seed, and the
    engine's extras such as top_k), image parameters for images (size, seed, num_inference_steps, guidance_scale,
    negative_prompt; steps, guidance and negative are read as those).
    """

    model_config = ConfigDict(extra="forbid")

    kind: GridKind = "text"
    models: list[str] = Field(min_length=1)
    prompts: list[Prompt] = Field(min_length=1)
    params: dict[str, list[Any]] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)
    system: str | None = None
    repeats: int = Field(1, ge=1, le=1000)
    # an X/Y/Z plot's cells (hub.lab.xyz): the settings of each cell and its place, instead of the product above
    plot: list[dict[str, Any]] | None = None
    axes: list[dict[str, Any]] | None = None  # the plot's axes (hub.lab.xyz.Axis), for its labels

    @field_validator("params")
    @classmethod
    def _sweeps(cls, params: dict[str, list[Any]]) -> dict[str, list[Any]]:
        params = {name: [_python(v, f"params.{name}") for v in values] for name, values in params.items()}
        for name, values in params.items():
            if not values:
                raise ValueError(f"params.{name}: give at least one value to sweep")
            seen = set()
            for v in values:  # the same value twice makes cells of one key: a run would hold one of them
                what = json.dumps(_plain(v), sort_keys=True, default=str)  # as the key sees it: 0 is 0.0
                if what in seen:
                    raise ValueError(f"params.{name}: {v!r} is given twice: give each value once")
                seen.add(what)
        return params

    @field_validator("fixed")
    @classmethod
    def _fixed(cls, fixed: dict[str, Any]) -> dict[str, Any]:
        return {name: _python(v, name) for name, v in fixed.items()}

    @model_validator(mode="after")
    def _names(self) -> Grid:
        if self.kind == "image":
            self.params = {IMAGE_ALIASES.get(k, k): v for k, v in self.params.items()}
            self.fixed = {IMAGE_ALIASES.get(k, k): v for k, v in self.fixed.items()}
            if any(not isinstance(p, str) for p in self.prompts):
                raise ValueError("an image grid's prompts are text, not message lists")
        both = set(self.params) & set(self.fixed)
        if both:
            raise ValueError(f"{sorted(both)} is both swept (params) and fixed: keep one")
        taken = (set(self.params) | set(self.fixed)) & RESERVED
        if taken:
            raise ValueError(f"{sorted(taken)}: a setting may not take the name of a result column")
        sdk = (set(self.params) | set(self.fixed)) & SDK_OWN
        if sdk:
            raise ValueError(f"{sorted(sdk)}: the runner sets these itself (one streamed answer per cell); "
                             "an engine's own parameters go in as settings of their own")
        if len(set(self.models)) != len(self.models):
            raise ValueError("a model is named twice in models")
        seen: dict[str, dict[str, Any]] = {}
        for spec in self.plot or []:
            what = json.dumps(_plain({IMAGE_ALIASES.get(k, k): v for k, v in spec.items() if k not in ("x", "y", "z")}),
                              sort_keys=True, default=str)
            place = {k: spec[k] for k in ("x", "y", "z") if k in spec}
            if what in seen:
                raise ValueError(f"plot cells {seen[what]} and {place} ask the same thing: give each axis value once")
            seen[what] = place
        return self

    @property
    def size(self) -> int:
        """How many cells the grid has."""
        if self.plot is not None:
            return len(self.plot) * self.repeats
        n = len(self.models) * len(self.prompts) * self.repeats
        for values in self.params.values():
            n *= len(values)
        return n

    def cells(self) -> list[Cell]:
        """Every cell, models outermost, then prompts, then the swept settings, then repeats."""
        if self.plot is not None:
            return self._plot_cells()
        names = list(self.params)
        out = []
        for model, (pi, prompt) in itertools.product(self.models, enumerate(self.prompts)):
            for combo in itertools.product(*(self.params[n] for n in names)):
                swept = dict(zip(names, combo, strict=True))
                for r in range(self.repeats):
                    out.append(self._cell(model, pi, prompt, swept, r, {}))
        return out

    def _plot_cells(self) -> list[Cell]:
        out = []
        for spec in self.plot or []:
            spec = {IMAGE_ALIASES.get(k, k): v for k, v in spec.items()}
            place = {k: int(spec.pop(k)) for k in ("x", "y", "z") if k in spec}
            model, prompt = spec.pop("model"), spec.pop("prompt")
            pi = self.prompts.index(prompt) if prompt in self.prompts else -1
            for r in range(self.repeats):
                out.append(self._cell(model, pi, prompt, spec, r, place))
        return out

    def _cell(self, model: str, pi: int, prompt: Prompt, swept: dict[str, Any], repeat: int,
              place: dict[str, int]) -> Cell:
        key = cell_key(model, prompt, swept, repeat)
        settings = {**self.fixed, **swept}
        if self.kind == "image" and settings.get("seed") is None:
            settings["seed"] = key_seed(key)
        return Cell(key, model, pi, prompt, settings, swept, repeat, place)

    def messages(self, cell: Cell) -> list[dict[str, Any]]:
        """The chat messages of a text cell: the system prompt, then the prompt (a message list as given)."""
        msgs = [{"role": "user", "content": cell.prompt}] if isinstance(cell.prompt, str) else list(cell.prompt)
        if self.system and not any(m.get("role") in ("system", "developer") for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.system})
        return msgs


def text_grid(models: list[str], prompts: list[Prompt], params: dict[str, list[Any]] | None = None,
              repeats: int = 1, system: str | None = None, **fixed: Any) -> Grid:
    """A text grid: each model x each prompt (a string or a message list) x each combination of params x repeats;
    keyword arguments are settings sent with every cell (max_tokens=64, say)."""
    return Grid(kind="text", models=models, prompts=prompts, params=params or {}, repeats=repeats, system=system,
                fixed=fixed)


def image_grid(models: list[str], prompts: list[str], params: dict[str, list[Any]] | None = None,
               repeats: int = 1, **fixed: Any) -> Grid:
    """An image grid: each model x each prompt x each combination of params (seed, steps, guidance, size,
    negative_prompt...) x repeats; keyword arguments are settings sent with every cell (size="64x64", say)."""
    return Grid(kind="image", models=models, prompts=prompts, params=params or {}, repeats=repeats, fixed=fixed)
