"""Compare rounds as runs, votes and standings (hub.lab.arena): pure, no hub."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from hub.lab import arena, store


def battles(*games: tuple[str, str, str]) -> pd.DataFrame:
    """Votes as `votes()` gives them, from (model_a, model_b, vote) triples."""
    return pd.DataFrame([{"run": "r", "cell": f"c{i}", "model_a": a, "model_b": b, "vote": v, "blind": True,
                          "voted_at": float(i)} for i, (a, b, v) in enumerate(games)], columns=arena.VOTE_COLUMNS)


def test_a_model_that_always_wins_ranks_first_and_stays_finite():
    table = arena.standings(battles(*[("llama", "qwen", "a")] * 3, *[("qwen", "llama", "b")] * 2))
    assert list(table["model"]) == ["llama", "qwen"]
    top, low = table.iloc[0], table.iloc[1]
    assert (top.wins, top.losses, top.battles, top.win_rate) == (5, 0, 5, 1.0)
    assert (low.wins, low.losses, low.win_rate) == (0, 5, 0.0)
    assert math.isfinite(top.score) and top.score > 1000 > low.score, "the prior keeps an undefeated model finite"
    # symmetric around the prior's 1000: both played the same games against it
    assert top.score - 1000 == pytest.approx(1000 - low.score)


def test_a_one_sided_pair_is_fitted_to_the_end():
    # MM stopped at its 10,000 steps with 1402 and 80 (both far below their true 1664 and 336): the scale drifts
    # by about 1/1000 a step when one model beat the other 1000 times
    table = arena.standings(battles(*[("a", "b", "a")] * 1000)).set_index("model")
    assert table.score["a"] + table.score["b"] == pytest.approx(2000, abs=1e-6), "symmetric around the prior's 1000"
    assert table.score["a"] == pytest.approx(1663.966, abs=1e-3)
    long = arena.standings(battles(*[(f"m{i}", f"m{i + 1}", "a") for i in range(29) for _ in range(50)]))
    assert long.score.iloc[0] + long.score.iloc[-1] == pytest.approx(2000, abs=1e-6)
    with pytest.raises(ValueError, match="prior must be above 0"):
        arena.standings(battles(("a", "b", "a")), prior=0)


def test_more_wins_score_higher():
    one = arena.standings(battles(("a", "b", "a"), ("a", "b", "b"), ("a", "b", "a")))
    many = arena.standings(battles(*[("a", "b", "a")] * 20, ("a", "b", "b")))
    gap = lambda t: float(t.set_index("model").score["a"] - t.set_index("model").score["b"])  # noqa: E731
    assert 0 < gap(one) < gap(many)


def test_ties_and_both_bad_are_half_a_win_each_way():
    table = arena.standings(battles(("x", "y", "tie"), ("y", "x", "tie"), ("x", "y", "bad")))
    assert table.score.iloc[0] == table.score.iloc[1] == pytest.approx(1000.0)
    assert list(table.win_rate) == [0.5, 0.5]
    x = table.set_index("model").loc["x"]
    assert (x.ties, x.both_bad, x.wins, x.losses, x.battles) == (2, 1, 0, 0, 3)
    assert list(table["model"]) == ["x", "y"], "equal scores sort by name"


def test_standings_do_not_depend_on_the_order_of_the_votes():
    games = [("a", "b", "a"), ("b", "c", "a"), ("c", "a", "tie"), ("a", "c", "b"), ("b", "a", "bad"),
             ("c", "b", "a"), ("a", "b", "a"), ("c", "d", "b"), ("d", "a", "a")]
    first = arena.standings(battles(*games))
    for k in range(1, 4):
        shuffled = battles(*games).sample(frac=1, random_state=k)
        pd.testing.assert_frame_equal(arena.standings(shuffled), first)
    # and the side a model sat on does not matter either
    swapped = [(b, a, {"a": "b", "b": "a"}.get(v, v)) for a, b, v in games]
    pd.testing.assert_frame_equal(arena.standings(battles(*swapped)), first)


def test_transitive_wins_order_three_models():
    table = arena.standings(battles(*[("a", "b", "a")] * 4, *[("b", "c", "a")] * 4, ("a", "c", "a")))
    assert list(table["model"]) == ["a", "b", "c"]


def test_no_votes_give_an_empty_table_with_the_columns():
    for empty in (battles(), pd.DataFrame(columns=arena.VOTE_COLUMNS), pd.DataFrame()):
        table = arena.standings(empty)
        assert list(table.columns) == arena.STANDING_COLUMNS and table.empty
    self_battle = arena.standings(battles(("a", "a", "a")))
    assert self_battle.empty, "a model against itself is no battle"


def round_of(i: int, models: list[str], vote: str | None = None, blind: bool = True) -> arena.Round:
    answers = [arena.Answer(model=m, answer=f"{m} says hi", ttft=0.1, tps=30.0, tokens=3, total=0.2) for m in models]
    return arena.Round(id=f"round-{i:04d}", round=i, prompt="hi", temperature=0.7, max_tokens=64, blind=blind,
                       answers=answers, vote=vote)


def test_rounds_are_rows_of_a_compare_run_and_a_vote_replaces_the_row(tmp_path):
    run = arena.session_run(None, tmp_path)
    assert run.manifest.kind == "compare"
    rnd = round_of(1, ["llama", "qwen"])
    arena.record_round(run, rnd, describe=lambda ms: {m: {"engine": "vllm"} for m in ms})
    rnd.vote, rnd.voted_at = "b", 123.0
    arena.record_round(run, rnd, describe=lambda ms: {m: {"engine": "vllm"} for m in ms})  # blind: named now
    arena.record_round(run, round_of(2, ["llama", "qwen", "mistral"], vote="a"))  # 3 models: no battle

    again = store.load(run.id, tmp_path)
    assert again.manifest.models == {"llama": {"engine": "vllm"}, "qwen": {"engine": "vllm"}, "mistral": {}}
    assert again.manifest.status == "done" and again.manifest.cells_done == 2
    rows = again.rows()
    assert rows["round-0001"]["vote"] == "b" and rows["round-0001"]["model_b"] == "qwen"
    assert rows["round-0001"]["models"] == '["llama", "qwen"]' and rows["round-0001"]["model_c"] is None
    assert arena.Round.from_row(rows["round-0001"]) == rnd
    from_table = arena.Round.from_row(again.table.iloc[0])
    assert from_table.started_at == pytest.approx(rnd.started_at, abs=1e-5), "the table's datetime, to the us"
    assert from_table.model_copy(update={"started_at": rnd.started_at}) == rnd, "the Parquet table gives the round"
    assert arena.session_run(run.id, tmp_path).id == run.id, "the session's run is reused"

    table = arena.votes(tmp_path)
    assert list(table.columns) == arena.VOTE_COLUMNS
    assert table[["model_a", "model_b", "vote"]].values.tolist() == [["llama", "qwen", "b"]]
    # a second session's run, an open (not blind) vote, and an unvoted round
    other = arena.session_run(None, tmp_path)
    arena.record_round(other, round_of(1, ["qwen", "mistral"], vote="tie", blind=False))
    arena.record_round(other, round_of(2, ["qwen", "mistral"]))
    assert len(arena.votes(tmp_path)) == 2 and len(arena.votes(tmp_path, blind_only=True)) == 1
    standing = arena.standings(arena.votes(tmp_path)).set_index("model")
    assert standing.loc["qwen"].wins == 1 and standing.loc["qwen"].ties == 1 and standing.loc["llama"].losses == 1


def test_failed_answers_count_as_the_rounds_error(tmp_path):
    run = arena.session_run(None, tmp_path)
    rnd = round_of(1, ["llama", "qwen"])
    rnd.answers[1].error = "model 'qwen' failed to start"
    row = arena.record_round(run, rnd)
    assert row["error"] == "qwen: model 'qwen' failed to start" and row["error_a"] is None
    assert store.load(run.id, tmp_path).manifest.errors == 1
    assert arena.votes(tmp_path).empty and arena.votes(tmp_path / "nowhere").empty


def test_a_blind_round_awaiting_its_vote_is_named_nowhere_the_app_shows(tmp_path):
    from hub.ui import runs as runs_tab

    describe = lambda ms: {m: {"engine": "vllm"} for m in ms}  # noqa: E731
    run = arena.session_run(None, tmp_path)
    rnd = round_of(1, ["llama-3", "qwen"])
    rnd.answers[1].error = "model 'qwen' is busy"
    arena.record_round(run, rnd, describe)
    # the runs list, the Runs tab's summary, its table and its Parquet file named them, in A/B order, before the vote
    assert store.runs(tmp_path)["models"].tolist() == [""]
    summary, _, table, _, download = runs_tab.open_run(tmp_path, run.id)
    shown = " ".join(map(str, table.value["data"])) + summary
    assert "llama" not in shown and "qwen" not in shown and "model A" in shown and not download.visible
    rnd.vote = "a"
    arena.record_round(run, rnd, describe)
    assert store.runs(tmp_path)["models"].tolist() == ["llama-3, qwen"]
    _, _, table, _, download = runs_tab.open_run(tmp_path, run.id)
    assert "llama-3" in " ".join(map(str, table.value["data"])) and download.visible
    # a blind round left without a vote can get none once the next round is recorded: its models are named then
    arena.record_round(run, round_of(2, ["mistral", "phi"]), describe)
    arena.record_round(run, round_of(3, ["gemma", "phi"], blind=False), describe)
    assert list(store.load(run.id, tmp_path).manifest.models) == ["llama-3", "qwen", "mistral", "phi", "gemma"]


def test_a_damaged_journal_line_does_not_break_the_standings(tmp_path):
    from hub.ui import compare

    run = arena.session_run(None, tmp_path)
    arena.record_round(run, round_of(1, ["a", "b"], vote="a"))
    with open(run.path / store.JOURNAL, "ab") as f:  # a byte that is no UTF-8, and names that are no names
        f.write(b'{"cell": "round-0002", "model_a": ["x"], "model_b": {"y": 1}, "vote": "a", "prompt": "\xff"}\n')
        f.write(b'{"cell": "round-0003", "model_a": "a", "model_b": "b", "vote": "b", "prompt": "\xfe"}\n')
    # UnicodeDecodeError (then a list as a model) made the Compare tab's standings, and every vote, fail
    assert arena.votes(tmp_path)[["model_a", "vote"]].values.tolist() == [["a", "a"], ["a", "b"]]
    assert list(compare.standings_table(tmp_path)["battles"]) == [2, 2]
