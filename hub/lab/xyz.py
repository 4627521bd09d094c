"""X/Y/Z plots, as AUTOMATIC1111's script makes them: up to three axes of settings, every combination one image, the
images drawn as a labelled grid (one grid per Z value, side by side). Pure: parsing, cells, settings and drawing.

An axis's values are written as a comma-separated list; CSV quoting keeps a comma inside a value (`"a, b", c`), a
newline separates values as a comma does, whitespace around a value goes and empty values are dropped. Numbers
(seed, steps, guidance) may also be written as ranges, mixed with single values (`1-3, 8` is 1, 2, 3, 8):

- `1-4`: every whole number from 1 to 4 (4-1 counts down); for guidance, steps of 1.0 (`1-4` is 1.0, 2.0, 3.0, 4.0)
- `1-10 (+3)`: 1, 4, 7, 10, a step (`10-1 (-3)` counts down; the end is left out when the step misses it)
- `1-10 [4]`: 4 values evenly spaced from 1 to 10, both ends included (rounded to whole numbers for seed and steps)

A minus sign right before the first number or after the range's dash belongs to that number: `-1` alone is the seed
-1 (a random seed, as in the Image tab), `-5--1` is the range -5 to -1, `-1-3` the range -1 to 3 (only seeds may go
below 0, and only to -1). A size is `WxH` (`×` and `X` too), or one number for a square (`512` is 512x512). Prompt S/R
is the list as written: its first value is searched in the prompt and each value takes its place in turn, so the
first cell is the prompt itself. Models are the hub's model ids; `*` alone is every model.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, model_validator

AxisKind = Literal["seed", "steps", "guidance", "size", "negative", "prompt_sr", "model"]
AXES: dict[str, str] = {"seed": "seed", "steps": "steps", "guidance": "guidance", "size": "size",
                        "negative": "negative prompt", "prompt_sr": "prompt S/R", "model": "model"}
MAX_VALUES = 64
MAX_CELLS = 256
MAX_STEPS = 500  # the image server's own limit on num_inference_steps
MAX_SEED = 2**63 - 1
MAX_SIDE = 8192  # the model decides its own limit and multiple; this only catches typos
MAX_LABEL = 400  # characters of a label, a title or a value drawn on a grid's margin
ROLES = ("x", "y", "z")

_INT = r"[+-]?\d+"
_FLOAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = r"^({n})\s*-\s*({n})\s*(?:\(\s*({n})\s*\)|\[\s*(\d+)\s*\])?$"
_INT_RANGE = re.compile(_RANGE.format(n=_INT))
_FLOAT_RANGE = re.compile(_RANGE.format(n=_FLOAT))
_SIZE = re.compile(r"^(\d+)\s*[x×]\s*(\d+)$", re.I)
_WHOLE = "write 1,2,3 or a range 1-10 (+2) or 1-10 [5]"
_HINTS = {"seed": _WHOLE, "steps": _WHOLE, "guidance": "write 3.5,7 or a range 1-2 (+0.5) or 3.5-7.5 [3]",
          "size": "write 512x768, or 512 for 512x512"}


def _check_value(kind: str, v: Any, item: str | None = None) -> Any:
    """One typed value of an axis, checked against the bounds of its kind; ValueError naming the axis and item."""
    shown = f'"{item if item is not None else v}"'
    if kind in ("seed", "steps"):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{kind}: {shown} is not a whole number ({_HINTS[kind]})")
        low, high = (-1, MAX_SEED) if kind == "seed" else (1, MAX_STEPS)
        if not low <= v <= high:
            bound = f"below {low}" if v < low else f"above {high}"
            why = " (-1 is a random seed)" if kind == "seed" else ""
            raise ValueError(f"{kind}: {shown}: {v} is {bound}{why}")
        return v
    if kind == "guidance":
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"guidance: {shown} is not a number ({_HINTS[kind]})")
        if v < 0:
            raise ValueError(f"guidance: {shown}: {v:g} is below 0 (0 is the model's own guidance)")
        return float(v)
    if not isinstance(v, str):
        raise ValueError(f"{AXES.get(kind, kind)}: {shown} is not text")
    if kind == "size":
        m = _SIZE.match(v.strip())
        if not m:
            raise ValueError(f"size: {shown} is not a size ({_HINTS[kind]})")
        w, h = int(m.group(1)), int(m.group(2))
        if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
            raise ValueError(f"size: {shown}: width and height go from 1 to {MAX_SIDE}")
        return f"{w}x{h}"
    if kind == "model" and not v.strip():
        raise ValueError("model: an empty model id")
    return v


class Axis(BaseModel):
    """One axis of a plot: its kind and its values, parsed and typed (see parse_axis for the text form)."""

    model_config = ConfigDict(extra="forbid")

    kind: AxisKind
    values: list[Any]

    @model_validator(mode="after")
    def _typed(self) -> Axis:
        if not self.values:
            raise ValueError(f"{self.label}: no values")
        if len(self.values) > MAX_VALUES:
            raise ValueError(f"{self.label}: {len(self.values)} values, more than {MAX_VALUES} on one axis")
        self.values = [_check_value(self.kind, v) for v in self.values]
        seen: set[Any] = set()
        for v in self.values:
            if v in seen:  # two cells that ask the same thing are one cell of a run: the grid lost one of its places
                raise ValueError(f'{self.label}: "{v}" is on the axis twice: give each value once')
            seen.add(v)
        return self

    @property
    def label(self) -> str:
        """The kind's label, as the grid's axis title."""
        return AXES[self.kind]

    @property
    def search(self) -> str | None:
        """What prompt S/R looks for in the prompt: its first value (None for the other kinds)."""
        return self.values[0] if self.kind == "prompt_sr" else None

    def value_label(self, v: Any) -> str:
        """How a value is written on the grid's margin."""
        if self.kind in ("seed", "steps", "size"):
            return f"{self.kind}: {v}"
        if self.kind == "guidance":
            return f"guidance: {v:g}"
        return str(v)


def _items(text: str, label: str = "axis") -> list[str]:
    """The values of an axis's text: CSV over one or more lines, trimmed, empty ones dropped."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    try:
        return [s.strip() for s in itertools.chain.from_iterable(rows) if s.strip()]
    except csv.Error as err:  # a value over the csv module's field limit (128 KiB)
        raise ValueError(f"{label}: the values cannot be read ({err}): write shorter values") from None


def _too_many(kind: str, item: str, n: int) -> None:
    if n > MAX_VALUES:
        raise ValueError(f'{AXES[kind]}: "{item}" makes {n} values, more than {MAX_VALUES} on one axis')


def _int_range(kind: str, item: str, m: re.Match[str]) -> list[int]:
    a, b = int(m.group(1)), int(m.group(2))
    if m.group(4) is not None:
        count = int(m.group(4))
        if count < 1:
            raise ValueError(f'{kind}: "{item}": the count in [ ] must be at least 1')
        _too_many(kind, item, count)
        return [a] if count == 1 else [math.floor(a + (b - a) * i / (count - 1) + 0.5) for i in range(count)]
    step = int(m.group(3)) if m.group(3) is not None else (1 if b >= a else -1)
    if step == 0:
        raise ValueError(f'{kind}: "{item}": the step is 0 (write a step such as (+2), or (-2) to count down)')
    if (b - a) * step < 0:
        raise ValueError(f'{kind}: "{item}": a step of {step:+d} never goes from {a} to {b} (write ({-step:+d}))')
    n = (b - a) // step + 1
    _too_many(kind, item, n)
    return [a + i * step for i in range(n)]


def _float_range(item: str, m: re.Match[str]) -> list[float]:
    a, b = float(m.group(1)), float(m.group(2))
    if m.group(4) is not None:
        count = int(m.group(4))
        if count < 1:
            raise ValueError(f'guidance: "{item}": the count in [ ] must be at least 1')
        _too_many("guidance", item, count)
        return [a] if count == 1 else [round(a + (b - a) * i / (count - 1), 10) for i in range(count)]
    step = float(m.group(3)) if m.group(3) is not None else (1.0 if b >= a else -1.0)
    if step == 0:
        raise ValueError(f'guidance: "{item}": the step is 0 (write a step such as (+0.5), or (-0.5) to count down)')
    if (b - a) * step < 0:
        raise ValueError(f'guidance: "{item}": a step of {step:+g} never goes from {a:g} to {b:g} (write ({-step:+g}))')
    n = math.floor((b - a) / step + 1e-9) + 1
    _too_many("guidance", item, n)
    return [round(a + i * step, 10) for i in range(n)]


def _number(kind: str, item: str) -> list[Any]:
    """The values of one item of a numeric axis: a number or a range."""
    if kind == "guidance":
        m = _FLOAT_RANGE.match(item)
        if m:
            return _float_range(item, m)
        try:
            return [float(item)]
        except ValueError:
            raise ValueError(f'guidance: "{item}" is not a number ({_HINTS[kind]})') from None
    m = _INT_RANGE.match(item)
    if m:
        return _int_range(kind, item, m)
    if re.fullmatch(_INT, item):
        return [int(item)]
    raise ValueError(f'{kind}: "{item}" is not a whole number ({_HINTS[kind]})')


def parse_axis(kind: str, text: str, models: list[str] | None = None) -> Axis:
    """An axis from the text of its values (syntax in the module's docstring); ValueError naming axis and item."""
    if kind not in AXES:
        raise ValueError(f"unknown axis {kind!r} (one of {', '.join(AXES)})")
    label, values = AXES[kind], []
    items = _items(text, label)
    if not items:
        raise ValueError(f"{label}: no values (write them separated by commas)")
    for item in items:
        if kind in ("seed", "steps", "guidance"):
            got = _number(kind, item)
        elif kind == "size" and item.isascii() and item.isdigit():
            got = [f"{item}x{item}"]
        elif kind == "model" and item == "*":
            if models is None or len(items) > 1:
                raise ValueError('model: "*" means every model; write it alone, where the models are known')
            got = list(models)
        else:
            got = [item]
        for v in got:
            values.append(_check_value(kind, v, item))
        if len(values) > MAX_VALUES:
            raise ValueError(f'{label}: {len(values)} values up to "{item}", more than {MAX_VALUES} on one axis')
    if not values:
        raise ValueError(f"{label}: no values (no models to take)")
    if kind == "model" and models is not None:
        for v in values:
            if v not in models:
                known = ", ".join(models[:10]) + (", ..." if len(models) > 10 else "")
                raise ValueError(f'model: "{v}" is not a model here (known: {known or "none"})')
    return Axis(kind=kind, values=values)


def _check_kinds(axes: list[Axis]) -> None:
    if len(axes) > len(ROLES):
        raise ValueError(f"at most {len(ROLES)} axes (x, y, z), not {len(axes)}")
    seen: set[str] = set()
    for a in axes:
        if a.kind in seen:
            raise ValueError(f"the same axis twice: {a.kind}")
        seen.add(a.kind)


def check_axes(axes: list[Axis], max_cells: int = MAX_CELLS) -> None:
    """ValueError unless the axes make a plot: at most 3, no kind twice, at most `max_cells` cells."""
    _check_kinds(axes)
    n = math.prod(len(a.values) for a in axes)
    if n > max_cells:
        sizes = " x ".join(str(len(a.values)) for a in axes)
        raise ValueError(f"the plot has {n} cells ({sizes}), more than the limit of {max_cells}: "
                         "take fewer values or fewer axes")


def check_prompt_sr(axis: Axis, prompt: str, negative: str = "") -> None:
    """ValueError unless prompt S/R's search string is in the prompt (or the negative prompt, which it also edits)."""
    if axis.search is not None and axis.search not in prompt and axis.search not in negative:
        nor = " nor in the negative prompt" if negative else ""
        raise ValueError(f"prompt S/R: {axis.search!r} is not in the prompt{nor}")


@dataclass(frozen=True)
class Cell:
    """One combination of a plot: its place (x, y, z; 0 where the axis is absent) and its value of each axis."""

    x: int
    y: int
    z: int
    values: dict[str, Any] = field(default_factory=dict)


def cells(axes: list[Axis]) -> list[Cell]:
    """Every combination of the axes (x, y, z in that order), z-major, then row by row as the grid is drawn."""
    _check_kinds(axes)
    padded = [*axes, *([None] * (len(ROLES) - len(axes)))]
    counts = [len(a.values) if a else 1 for a in padded]
    out = []
    for z, y, x in itertools.product(range(counts[2]), range(counts[1]), range(counts[0])):
        values = {a.kind: a.values[i] for a, i in zip(padded, (x, y, z), strict=True) if a}
        out.append(Cell(x=x, y=y, z=z, values=values))
    return out


def apply(values: dict[str, Any], base: dict[str, Any], search: str | None = None) -> dict[str, Any]:
    """The settings of one cell: `base` (prompt, negative, seed, steps, guidance, size, model) with each axis value
    over its key; a prompt S/R value then takes the place of `search` (the axis's first value, Axis.search) in the
    prompt and the negative prompt, as AUTOMATIC1111 does."""
    out = dict(base)
    for kind, v in values.items():
        if kind == "prompt_sr":
            continue
        if kind not in AXES:
            raise ValueError(f"unknown axis {kind!r} (one of {', '.join(AXES)})")
        out[kind] = v
    if "prompt_sr" in values:
        if not search:
            raise ValueError("prompt S/R: apply needs the search string (the axis's first value, Axis.search)")
        for key in ("prompt", "negative"):
            if isinstance(out.get(key), str):
                out[key] = out[key].replace(search, values["prompt_sr"])
    return out


# drawing

_WHITE, _BLACK, _GREY = (255, 255, 255), (0, 0, 0), (160, 160, 160)
_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> _Font:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _font_size(w: int, h: int) -> int:
    return max(12, (w + h) // 28)


def _line_h(font: _Font) -> int:
    bottom = font.getbbox("Ayg|")[3]
    return int(bottom + max(2, bottom // 5))


def _fitting(word: str, font: _Font, width: float) -> int:
    """How many leading characters of `word` fit in `width` pixels (at least 1): a galloping search, so a long word
    costs a few measures of short prefixes per line, not one measure of every prefix."""
    fit, step = 1, 1
    while fit + step <= len(word) and font.getlength(word[:fit + step]) <= width:
        fit += step
        step *= 2
    hi = min(fit + step, len(word) + 1)  # word[:hi] is too wide (or past the end)
    while hi - fit > 1:
        mid = (fit + hi) // 2
        if font.getlength(word[:mid]) <= width:
            fit = mid
        else:
            hi = mid
    return fit


def _wrap(text: str, font: _Font, width: float) -> list[str]:
    """Lines of text no wider than `width` pixels: words greedily, a word too long broken between characters; text
    beyond MAX_LABEL characters is cut (with "…"), a label is no place for a whole prompt."""
    if len(text) > MAX_LABEL:
        text = text[:MAX_LABEL - 1] + "…"
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        line = ""
        for word in para.split():
            while len(word) > 1 and (cut := _fitting(word, font, width)) < len(word):
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:cut])
                word = word[cut:]
            joined = f"{line} {word}" if line else word
            if font.getlength(joined) <= width or not line:
                line = joined
            else:
                lines.append(line)
                line = word
        if line:
            lines.append(line)
    return lines


def _write(draw: ImageDraw.ImageDraw, lines: list[str], font: _Font, box: tuple[int, int, int, int],
           limit: int | None = None) -> None:
    """Lines centred in a box (x0, y0, x1, y1), kept within 0..limit horizontally."""
    lh = _line_h(font)
    x0, y0, x1, y1 = box
    y = y0 + (y1 - y0 - lh * len(lines)) // 2
    for line in lines:
        w = font.getlength(line)
        x = x0 + int((x1 - x0 - w) // 2)
        if limit is not None:
            x = max(0, min(x, int(limit - w)))
        draw.text((x, y), line, fill=_BLACK, font=font)
        y += lh


def _fit(im: Image.Image, w: int, h: int) -> Image.Image:
    """An image as an RGB cell of w x h: scaled to fit, keeping its aspect ratio, centred on white."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (*_WHITE, 255)), rgba)
    im = im.convert("RGB")
    if im.size == (w, h):
        return im
    scale = min(w / im.width, h / im.height)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    cell = Image.new("RGB", (w, h), _WHITE)
    cell.paste(im.resize(size, Image.Resampling.LANCZOS), ((w - size[0]) // 2, (h - size[1]) // 2))
    return cell


def _failed(w: int, h: int, font: _Font) -> Image.Image:
    cell = Image.new("RGB", (w, h), _GREY)
    _write(ImageDraw.Draw(cell), _wrap("failed", font, w), font, (0, 0, w, h))
    return cell


def draw_grid(images: list[list[Image.Image | None]], x_labels: list[str], y_labels: list[str],
              x_title: str = "", y_title: str = "", title: str = "") -> Image.Image:
    """Rows of images as one grid, A1111 style: X labels over the columns, Y labels left of the rows (the Y title
    turned to read upwards at the far left), the title on top; a None cell is grey, with "failed" in it."""
    if not images or not images[0]:
        raise ValueError("draw_grid: no images")
    rows, cols = len(images), len(images[0])
    if any(len(r) != cols for r in images):
        raise ValueError(f"draw_grid: every row needs {cols} images")
    if (x_labels and len(x_labels) != cols) or (y_labels and len(y_labels) != rows):
        raise ValueError(f"draw_grid: {cols} x labels and {rows} y labels, or none, for {cols}x{rows} images")
    present = [im for r in images for im in r if im is not None]
    cw = max((im.width for im in present), default=256)
    ch = max((im.height for im in present), default=256)
    font = _font(_font_size(cw, ch))
    lh = _line_h(font)
    pad, gap = max(4, lh // 4), max(2, min(cw, ch) // 64)
    body_w, body_h = cols * cw + (cols - 1) * gap, rows * ch + (rows - 1) * gap

    left, y_lines = 0, [list[str]() for _ in range(rows)]
    if y_labels:
        want = max(max((font.getlength(s) for s in label.splitlines()), default=0) for label in y_labels)
        inner = max(min(want, max(cw, 8 * lh)), lh)
        y_lines = [_wrap(s, font, inner) for s in y_labels]
        while inner < want and max(map(len, y_lines)) * lh > ch:  # too tall for its row: a wider margin
            inner = min(want, inner * 1.5)
            y_lines = [_wrap(s, font, inner) for s in y_labels]
        left = int(inner) + 2 * pad
    yt_lines = _wrap(y_title, font, body_h) if y_title else []
    strip = len(yt_lines) * lh + 2 * pad if yt_lines else 0
    width = strip + left + body_w

    x_lines = [_wrap(s, font, max(cw - 2, lh)) for s in x_labels]  # the gaps keep neighbours apart
    xl_h = max(map(len, x_lines)) * lh + 2 * pad if x_labels else 0
    xt_lines = _wrap(x_title, font, width - 2 * pad) if x_title else []
    xt_h = len(xt_lines) * lh + pad + (0 if x_labels else pad) if xt_lines else 0
    big = _font(round(_font_size(cw, ch) * 1.25))
    t_lines = _wrap(title, big, width - 2 * pad) if title else []
    t_h = len(t_lines) * _line_h(big) + 2 * pad if t_lines else 0
    ox, oy = strip + left, t_h + xt_h + xl_h

    out = Image.new("RGB", (width, oy + body_h), _WHITE)
    draw = ImageDraw.Draw(out)
    for r, row in enumerate(images):
        for c, im in enumerate(row):
            cell = _failed(cw, ch, font) if im is None else _fit(im, cw, ch)
            out.paste(cell, (ox + c * (cw + gap), oy + r * (ch + gap)))
    if t_lines:
        _write(draw, t_lines, big, (0, pad, width, t_h - pad), width)
    if xt_lines:
        _write(draw, xt_lines, font, (ox, t_h + pad, ox + body_w, t_h + xt_h), width)
    for c, lines in enumerate(x_lines):
        x0 = ox + c * (cw + gap)
        _write(draw, lines, font, (x0, t_h + xt_h + pad, x0 + cw, oy - pad))
    for r, lines in enumerate(y_lines if y_labels else []):
        y0 = oy + r * (ch + gap)
        _write(draw, lines, font, (strip + pad, y0, ox - pad, y0 + ch))
    if yt_lines:
        band = Image.new("RGB", (body_h, strip), _WHITE)
        _write(ImageDraw.Draw(band), yt_lines, font, (0, 0, body_h, strip))
        out.paste(band.transpose(Image.Transpose.ROTATE_90), (0, oy))
    return out


def draw_grids(grids: list[Image.Image], z_labels: list[str], z_title: str = "") -> Image.Image:
    """Grids of the Z values in one image, each under its Z label, the Z title on top: side by side, or stacked
    when a grid is wider than tall (so the whole stays nearer a square); one grid with no labels comes back as is."""
    if not grids:
        raise ValueError("draw_grids: no grids")
    if z_labels and len(z_labels) != len(grids):
        raise ValueError(f"draw_grids: {len(grids)} z labels, or none, for {len(grids)} grids")
    if len(grids) == 1 and not any(z_labels) and not z_title:
        return grids[0]
    gw, gh = max(g.width for g in grids), max(g.height for g in grids)
    font = _font(min(96, max(14, max(gw, gh) // 40)))
    lh = _line_h(font)
    pad = max(4, lh // 4)
    gap = 2 * lh
    stacked = gw > gh
    lines = [_wrap(s, font, max(g.width - 2 * pad, lh)) for s, g in zip(z_labels, grids, strict=True)]
    label_h = max(map(len, lines)) * lh + 2 * pad if any(lines) else 0
    if stacked:
        width = gw
        height = sum(g.height for g in grids) + len(grids) * label_h + (len(grids) - 1) * gap
    else:
        width = sum(g.width for g in grids) + (len(grids) - 1) * gap
        height = gh + label_h
    t_lines = _wrap(z_title, font, width - 2 * pad) if z_title else []
    t_h = len(t_lines) * lh + 2 * pad if t_lines else 0
    out = Image.new("RGB", (width, t_h + height), _WHITE)
    draw = ImageDraw.Draw(out)
    if t_lines:
        _write(draw, t_lines, font, (0, pad, width, t_h - pad), width)
    x, y = 0, t_h
    for i, g in enumerate(grids):
        if lines and lines[i]:
            _write(draw, lines[i], font, (x, y + pad, x + g.width, y + label_h - pad))
        out.paste(g.convert("RGB"), (x, y + label_h))
        if stacked:
            y += label_h + g.height + gap
        else:
            x += g.width + gap
    return out
