"""hub.lab.views: a run's answers side by side, tables whose text wraps, nearest neighbours (no hub needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hub.lab import views


def table() -> pd.DataFrame:
    """A text run's table as the runner records it: cells in the order they ended, one failed."""
    rows = [("b", 1, "second?", 0.8, "B2", None), ("a", 0, "first?", 0.0, "A1", None),
            ("b", 0, "first?", 0.0, None, "503: b failed to start"), ("a", 1, "second?", 0.0, "A2\nline two\n\n", None),
            ("a", 0, "first?", 0.8, "A1 hot", None), ("b", 1, "second?", 0.0, "B2 cold", None),
            ("a", 1, "second?", 0.8, "A2 hot", None), ("b", 0, "first?", 0.8, "B1 hot", None)]
    t = pd.DataFrame(rows, columns=["model", "prompt_index", "prompt", "temperature", "answer", "error"])
    return t.assign(cell=[f"c{i}" for i in range(len(t))], repeat=0, max_tokens=16, ttft_s=0.1, total_s=0.5)


def test_side_by_side_is_prompts_by_models_in_the_grids_order():
    out = views.side_by_side(table(), columns=["model", "temperature"])
    assert list(out.index) == ["first?", "second?"], "prompts in the grid's order, not as cells ended"
    assert list(out.columns) == [("a", 0.0), ("a", 0.8), ("b", 0.0), ("b", 0.8)]
    assert out.loc["second?", ("a", 0.0)] == "A2\nline two", "an answer's own newlines stay, those at its end go"
    assert out.loc["first?", ("b", 0.0)] == "error: 503: b failed to start", "a failed cell shows its error"
    one = views.side_by_side(table()[table()["temperature"] == 0])
    assert list(one.columns) == ["a", "b"] and one.loc["first?", "a"] == "A1"


def test_side_by_side_names_what_varies_when_cells_would_collide():
    with pytest.raises(ValueError, match="add temperature to the columns or the rows"):
        views.side_by_side(table())


def test_wrapped_text_keeps_newlines_and_wraps():
    html = views.wrapped(views.side_by_side(table(), ["model", "temperature"]), width="10em").to_html()
    assert "white-space: pre-wrap" in html and "max-width: 10em" in html and "A2\nline two" in html
    assert ">0.8<" in html and "0.800000" not in html, "a setting in a header reads as written"
    assert ">0.123<" in views.wrapped(pd.DataFrame({"x": [0.12345]})).to_html()


def test_neighbours_are_the_most_similar_others_first():
    sim = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.1], [0.9, 0.1, 1.0]])
    out = views.neighbours(sim, ["x", "y", "z"], k=5)
    assert list(out.columns) == ["1", "1 sim", "2", "2 sim"], "k is capped at the other items"
    assert list(out["1"]) == ["z", "x", "x"] and list(out["2"]) == ["y", "z", "y"]
    assert out.loc["x", "1 sim"] == 0.9 and out.loc["y", "2 sim"] == 0.1
    with pytest.raises(ValueError, match="square"):
        views.neighbours(sim[:2], ["x", "y", "z"])
