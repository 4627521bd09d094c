"""X/Y/Z plots (hub/lab/xyz.py): the values' syntax and its errors, cells and their settings, batching order, and
the drawn grids checked pixel by pixel. Pure: no hub, no network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from hub.lab.xyz import (
    AXES,
    MAX_CELLS,
    MAX_VALUES,
    Axis,
    Cell,
    apply,
    cells,
    check_axes,
    check_prompt_sr,
    draw_grid,
    draw_grids,
    parse_axis,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
WHITE = (255, 255, 255)
BASE = {"prompt": "a dog on a beach", "negative": "blurry dog", "seed": 1, "steps": 20, "guidance": 7.0,
        "size": "512x512", "model": "sd"}


def values(kind: str, text: str, models: list[str] | None = None) -> list:
    return parse_axis(kind, text, models).values


# parsing


def test_axes_in_order_with_labels() -> None:
    assert list(AXES) == ["seed", "steps", "guidance", "size", "negative", "prompt_sr", "model"]
    assert AXES["negative"] == "negative prompt" and AXES["prompt_sr"] == "prompt S/R"
    assert parse_axis("prompt_sr", "a, b").label == "prompt S/R"


@pytest.mark.parametrize(("text", "expected"), [
    ("1, 2, 3", [1, 2, 3]),
    ("  5 ,, 6 , ", [5, 6]),
    ("1-4", [1, 2, 3, 4]),
    ("1 - 4", [1, 2, 3, 4]),
    ("4-1", [4, 3, 2, 1]),
    ("1-10 (+3)", [1, 4, 7, 10]),
    ("1-10 (3)", [1, 4, 7, 10]),
    ("1-10 (+4)", [1, 5, 9]),
    ("10-1 (-3)", [10, 7, 4, 1]),
    ("1-10 [4]", [1, 4, 7, 10]),
    ("1-10 [1]", [1]),
    ("10-1 [4]", [10, 7, 4, 1]),
    ("1-3, 8", [1, 2, 3, 8]),
    ("2\n3", [2, 3]),
])
def test_whole_numbers(text: str, expected: list[int]) -> None:
    got = values("steps", text)
    assert got == expected and all(type(v) is int for v in got)


def test_negative_seeds() -> None:
    assert values("seed", "-1") == [-1]
    assert values("seed", "-1, 5, 7") == [-1, 5, 7]
    assert values("seed", "-1-2") == [-1, 0, 1, 2]
    assert values("seed", "+3") == [3]
    with pytest.raises(ValueError, match=r'seed: "-5--1": -5 is below -1'):
        parse_axis("seed", "-5--1")
    with pytest.raises(ValueError, match=r'seed: "-2"'):
        parse_axis("seed", "-2")


@pytest.mark.parametrize(("text", "expected"), [
    ("7.5, 3", [7.5, 3.0]),
    ("1-2 (+0.5)", [1.0, 1.5, 2.0]),
    ("2-1 (-0.5)", [2.0, 1.5, 1.0]),
    ("3.5-7.5 [3]", [3.5, 5.5, 7.5]),
    ("1-4", [1.0, 2.0, 3.0, 4.0]),
    ("0-1 (+0.1)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
    (".5, 0-1 [2]", [0.5, 0.0, 1.0]),
])
def test_guidance(text: str, expected: list[float]) -> None:
    got = values("guidance", text)
    assert got == expected and all(type(v) is float for v in got)


def test_sizes_texts_and_models() -> None:
    assert values("size", "512, 64x96, 32×32, 8X8, 640 x 480") == ["512x512", "64x96", "32x32", "8x8", "640x480"]
    assert values("prompt_sr", 'dog, "cat, big", bird') == ["dog", "cat, big", "bird"]
    assert values("negative", '"blurry, ugly", low quality') == ["blurry, ugly", "low quality"]
    assert values("model", "b, a", ["a", "b", "c"]) == ["b", "a"]
    assert values("model", "anything") == ["anything"]
    assert values("model", "*", ["a", "b"]) == ["a", "b"]


@pytest.mark.parametrize(("kind", "text", "words"), [
    ("steps", "abc", ['steps: "abc" is not a whole number', "1-10 (+2)", "1-10 [5]"]),
    ("seed", "1.5", ['seed: "1.5" is not a whole number']),
    ("guidance", "high", ['guidance: "high" is not a number', "1-2 (+0.5)"]),
    ("guidance", "nan", ['guidance: "nan"']),
    ("steps", "1-10 (+0)", ['steps: "1-10 (+0)"', "step is 0"]),
    ("guidance", "1-2 (+0)", ['guidance: "1-2 (+0)"', "step is 0"]),
    ("steps", "10-1 (+3)", ['steps: "10-1 (+3)"', "(-3)"]),
    ("guidance", "1-2 (-0.5)", ['guidance: "1-2 (-0.5)"', "(+0.5)"]),
    ("steps", "1-10 [0]", ['steps: "1-10 [0]"', "at least 1"]),
    ("steps", "0", ['steps: "0"', "below 1"]),
    ("steps", "0-3", ['steps: "0-3"', "below 1"]),
    ("steps", "501", ['steps: "501"', "above 500"]),
    ("guidance", "-0.5", ['guidance: "-0.5"', "below 0"]),
    ("size", "5xx", ['size: "5xx" is not a size', "512x768"]),
    ("size", "0x512", ['size: "0x512"']),
    ("size", "9000", ['size: "9000"']),
    ("steps", "", ["steps: no values"]),
    ("negative", " , ,", ["negative prompt: no values"]),
    ("seed", "1-1000000000", ['seed: "1-1000000000" makes 1000000000 values', f"more than {MAX_VALUES}"]),
    ("steps", "1-10 [65]", ['steps: "1-10 [65]"', f"more than {MAX_VALUES}"]),
    ("steps", "1-40, 50-90", ['steps: 81 values up to "50-90"', f"more than {MAX_VALUES}"]),
    ("model", "x", ['model: "x" is not a model here', "a, b"]),
    ("model", "a, *", ['model: "*"']),
    ("colour", "red", ["unknown axis 'colour'"]),
])
def test_errors_name_the_axis_and_item(kind: str, text: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as e:
        parse_axis(kind, text, ["a", "b"])
    message = str(e.value)
    assert "\n" not in message
    for w in words:
        assert w in message


def test_star_needs_models() -> None:
    with pytest.raises(ValueError, match=r'model: "\*"'):
        parse_axis("model", "*")
    with pytest.raises(ValueError, match="model: no values"):
        parse_axis("model", "*", [])


def test_axis_checks_values_made_directly() -> None:
    assert Axis(kind="guidance", values=[7]).values == [7.0]
    assert Axis(kind="size", values=["64X32"]).values == ["64x32"]
    for kind, bad in [("steps", [True]), ("steps", ["3"]), ("seed", [-7]), ("guidance", [-1]), ("size", ["big"]),
                      ("steps", []), ("seed", list(range(MAX_VALUES + 1))), ("negative", [3])]:
        with pytest.raises(ValidationError):
            Axis(kind=kind, values=bad)
    with pytest.raises(ValidationError):
        Axis(kind="steps", values=[1], extra=1)
    with pytest.raises(ValidationError):
        Axis(kind="cfg", values=[1])


def test_value_labels() -> None:
    label = lambda kind, text: [a.value_label(v) for a in [parse_axis(kind, text)] for v in a.values]  # noqa: E731
    assert label("seed", "3, -1") == ["seed: 3", "seed: -1"]
    assert label("steps", "20") == ["steps: 20"]
    assert label("guidance", "7.5, 7, 0.25") == ["guidance: 7.5", "guidance: 7", "guidance: 0.25"]
    assert label("size", "64") == ["size: 64x64"]
    assert label("negative", "blurry") == ["blurry"]
    assert label("prompt_sr", "dog, cat") == ["dog", "cat"]
    assert label("model", "sd-turbo") == ["sd-turbo"]


@given(start=st.integers(1, 250), step=st.integers(1, 8), n=st.integers(0, 30))
def test_stepped_ranges_keep_both_ends(start: int, step: int, n: int) -> None:
    end = start + step * n
    up = values("steps", f"{start}-{end} (+{step})")
    assert up[0] == start and up[-1] == end and len(up) == n + 1
    assert values("steps", f"{end}-{start} (-{step})") == up[::-1]
    counted = values("steps", f"{start}-{end} [{n + 1}]")
    assert counted[0] == start and counted[-1] == end and len(counted) == n + 1


# cells and settings


def test_cells_order_and_count() -> None:
    x, y, z = parse_axis("seed", "1, 2, 3"), parse_axis("steps", "10, 20"), parse_axis("model", "a, b")
    got = cells([x, y, z])
    assert len(got) == 12
    assert [(c.x, c.y, c.z) for c in got[:4]] == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0)]
    assert (got[6].x, got[6].y, got[6].z) == (0, 0, 1)
    assert got[-1] == Cell(x=2, y=1, z=1, values={"seed": 3, "steps": 20, "model": "b"})
    assert [(c.x, c.y, c.z) for c in cells([x])] == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
    assert [(c.y, c.x) for c in cells([x, y])] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert cells([]) == [Cell(0, 0, 0, {})]
    with pytest.raises(ValueError, match="the same axis twice: seed"):
        cells([x, parse_axis("seed", "4")])


def test_check_axes() -> None:
    a, b = parse_axis("seed", "1-16"), parse_axis("steps", "1-16")
    check_axes([a, b])  # 256 cells, the limit
    with pytest.raises(ValueError, match="the same axis twice: seed"):
        check_axes([a, parse_axis("seed", "1")])
    with pytest.raises(ValueError, match=rf"has 512 cells .*limit of {MAX_CELLS}"):
        check_axes([a, b, parse_axis("guidance", "1, 2")])
    with pytest.raises(ValueError, match=r"has 256 cells .*limit of 100"):
        check_axes([a, b], max_cells=100)
    with pytest.raises(ValueError, match="at most 3 axes"):
        check_axes([a, b, parse_axis("guidance", "1"), parse_axis("model", "m")], max_cells=10**6)


def test_apply_overrides_and_prompt_sr() -> None:
    base = dict(BASE)
    sr = parse_axis("prompt_sr", "dog, cat")
    assert sr.search == "dog" and parse_axis("seed", "1").search is None
    got = [apply(c.values, base, sr.search) for c in cells([parse_axis("steps", "5, 9"), sr])]
    assert [(s["steps"], s["prompt"], s["negative"]) for s in got] == [
        (5, "a dog on a beach", "blurry dog"), (9, "a dog on a beach", "blurry dog"),
        (5, "a cat on a beach", "blurry cat"), (9, "a cat on a beach", "blurry cat")]
    assert base == BASE  # pure
    assert apply({"size": "64x64", "guidance": 2.0}, base) == {**BASE, "size": "64x64", "guidance": 2.0}
    # S/R edits the negative prompt of the cell, after a negative axis put it there
    assert apply({"negative": "ugly dog", "prompt_sr": "cat"}, base, "dog")["negative"] == "ugly cat"
    with pytest.raises(ValueError, match="prompt S/R"):
        apply({"prompt_sr": "cat"}, base)


def test_check_prompt_sr() -> None:
    sr = parse_axis("prompt_sr", "dog, cat")
    check_prompt_sr(sr, "a dog")
    check_prompt_sr(sr, "a cat", "dog hair")
    check_prompt_sr(parse_axis("seed", "1"), "anything")
    with pytest.raises(ValueError, match="prompt S/R: 'dog' is not in the prompt"):
        check_prompt_sr(sr, "a cat")


def pixels(im: Image.Image) -> list[tuple[int, ...]]:
    flat = getattr(im, "get_flattened_data", None) or im.getdata  # getdata goes in Pillow 14
    return list(flat())


def solid(rows: int = 2, cols: int = 3, size: tuple[int, int] = (64, 64)) -> list[list[Image.Image | None]]:
    return [[Image.new("RGB", size, COLOURS[(r * cols + c) % 6]) for c in range(cols)] for r in range(rows)]


def test_bare_grid_is_the_cells_and_gaps() -> None:
    out = draw_grid(solid(), [], [])
    gap = (out.width - 3 * 64) // 2
    assert gap >= 1 and out.size == (3 * 64 + 2 * gap, 2 * 64 + gap)
    for r in range(2):
        for c in range(3):
            assert out.getpixel((c * (64 + gap) + 32, r * (64 + gap) + 32)) == COLOURS[r * 3 + c]
    # nothing but cell colours and white gaps: no margin, no text
    assert set(pixels(out)) <= {*COLOURS, WHITE}


def test_labelled_grid_grows_and_keeps_cells() -> None:
    bare = draw_grid(solid(), [], [])
    out = draw_grid(solid(), ["guidance: 7.5", "guidance: 12", "guidance: 3"], ["steps: 20", "steps: 40"],
                    x_title="guidance", y_title="steps", title="a plot")
    assert out.width > bare.width and out.height > bare.height
    gap = (bare.width - 3 * 64) // 2
    x0, y0 = out.width - bare.width, out.height - bare.height  # the body sits at the bottom right
    for r in range(2):
        for c in range(3):
            assert out.getpixel((x0 + c * (64 + gap) + 32, y0 + r * (64 + gap) + 32)) == COLOURS[r * 3 + c]
    top = out.crop((0, 0, out.width, y0))
    left = out.crop((0, y0, x0, out.height))
    assert any(p != WHITE for p in pixels(top)) and any(p != WHITE for p in pixels(left))
    # more labels, more margin: only x labels grow the top, only y labels the left
    only_x = draw_grid(solid(), ["a", "b", "c"], [])
    only_y = draw_grid(solid(), [], ["a", "b"])
    assert only_x.width == bare.width and only_x.height > bare.height
    assert only_y.height == bare.height and only_y.width > bare.width
    titled = draw_grid(solid(), ["a", "b", "c"], [], title="title")
    assert titled.height > only_x.height


def test_long_labels_wrap_and_tiny_cells_stay_readable() -> None:
    short = draw_grid(solid(1, 2), ["a", "b"], ["y"])
    long = draw_grid(solid(1, 2), ["a very long label indeed for a tiny cell", "b"], ["y"])
    assert long.width == short.width and long.height > short.height  # wrapped over lines, not widened
    word = draw_grid(solid(1, 1), ["Supercalifragilisticexpialidocious"], [])
    assert word.width == 64 and word.height > 64 + 24


def test_failed_cell_is_grey() -> None:
    images = solid()
    images[1][1] = None
    out = draw_grid(images, ["a", "b", "c"], ["d", "e"])
    bare = draw_grid(solid(), [], [])
    gap = (bare.width - 3 * 64) // 2
    x0, y0 = out.width - bare.width + 64 + gap, out.height - 64  # the failed cell's top left
    corner = out.getpixel((x0 + 3, y0 + 3))
    assert corner[0] == corner[1] == corner[2] and 64 < corner[0] < 224
    cell = out.crop((x0, y0, x0 + 64, y0 + 64))
    assert any(p[0] < 64 for p in pixels(cell))  # "failed" written in it
    assert draw_grid([[None]], [], []).size == (256, 256)


def test_cells_take_the_largest_size_keeping_aspect() -> None:
    small = Image.new("RGB", (32, 32), COLOURS[0])
    wide = Image.new("RGBA", (64, 32), (*COLOURS[1], 255))
    out = draw_grid([[small, wide, Image.new("RGB", (64, 64), COLOURS[2])]], [], [])
    gap = (out.width - 3 * 64) // 2
    assert out.height == 64
    assert out.getpixel((32, 32)) == COLOURS[0] and out.getpixel((1, 1)) == COLOURS[0]
    assert out.getpixel((64 + gap + 32, 32)) == COLOURS[1] and out.getpixel((64 + gap + 32, 2)) == WHITE


def test_one_column_and_one_row() -> None:
    column = draw_grid(solid(3, 1), [], ["1", "2", "3"], y_title="seed")
    row = draw_grid(solid(1, 3), ["1", "2", "3"], [], x_title="seed")
    assert column.width > 64 and row.height > 64
    assert column.getpixel((column.width - 32, column.height - 32)) == COLOURS[2]
    assert row.getpixel((row.width - 32, row.height - 32)) == COLOURS[2]


def test_bad_shapes() -> None:
    with pytest.raises(ValueError):
        draw_grid([], [], [])
    with pytest.raises(ValueError):
        draw_grid([[None, None], [None]], [], [])
    with pytest.raises(ValueError):
        draw_grid(solid(), ["a"], [])
    with pytest.raises(ValueError):
        draw_grids([], [], "")


def test_draw_is_deterministic() -> None:
    args = (solid(), ["guidance: 7.5", "b", "c"], ["steps: 20", "e"])
    assert draw_grid(*args, x_title="x", y_title="y").tobytes() == draw_grid(*args, x_title="x", y_title="y").tobytes()


def test_draw_grids() -> None:
    tall = draw_grid(solid(3, 2), ["a", "b"], ["c", "d", "e"])
    assert draw_grids([tall], [], "") is tall
    two = draw_grids([tall, tall], ["model: a", "model: b"], "model")
    assert two.width > 2 * tall.width and two.height > tall.height  # side by side
    wide = draw_grid(solid(1, 3), ["a", "b", "c"], [])
    stacked = draw_grids([wide, wide], ["steps: 1", "steps: 2"], "")
    assert stacked.width == wide.width and stacked.height > 2 * wide.height
    labelled = draw_grids([tall], ["model: a"], "")
    assert labelled.width == tall.width and labelled.height > tall.height
    assert any(p != WHITE for p in pixels(labelled.crop((0, 0, tall.width, labelled.height - tall.height))))


def test_a_value_too_long_to_read_is_a_value_error() -> None:
    # csv.Error is no ValueError: the Image tab showed a bare "Error" instead of what to fix
    with pytest.raises(ValueError, match="negative prompt: the values cannot be read"):
        parse_axis("negative", "blurry, " + "x" * 200_000)


def test_a_long_label_without_spaces_draws_at_once() -> None:
    # a negative prompt such as "lowres,bad_anatomy,bad_hands,..." is one word: each line measured every prefix of
    # the rest, so 500 characters took 10 s and 2000 more than 5 minutes, holding the Image tab's plot
    import time

    word = "lowres,bad_anatomy,bad_hands,text,error," * 50
    t0 = time.monotonic()
    grid = draw_grid([[Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64))]], ["a", word], [word], "X", word)
    assert time.monotonic() - t0 < 10
    assert grid.width < 4000 and grid.height < 4000, "a label is cut, not drawn whole"
