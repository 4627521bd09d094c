"""The Compare tab's handlers, called directly against a real `hub serve` with the test responder as its engines."""

from __future__ import annotations

import itertools
import random
import re
import time

import gradio as gr
import pytest

from hub.lab import arena, store
from hub.ui import compare
from hub.ui.app import build_ui
from hub.ui.clients import make_clients
from tests.conftest import start_hub
from tests.helpers import image_model, text_model

REGISTRY = ("[hub]\nmemory_budget_gb = 10\n"
            + text_model("llama", "--start-delay", "1.5", "--chunk-delay", "0.04", memory=3)
            + text_model("qwen", "--chunk-delay", "0.06", memory=3) + text_model("broken", "--fail-start", memory=0)
            + image_model("tiny-sd", memory=2))
PROMPT = "tell me about " + " ".join(f"w{i}" for i in range(24))
ANSWER = f"echo: {PROMPT}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = start_hub(tmp_path_factory.mktemp("compare"), REGISTRY)
    yield h
    h.stop_leaving_nothing()


@pytest.fixture
def clients(hub):
    client, admin = make_clients(hub.url)
    yield client, admin
    admin.close()


def cold(admin, *models: str) -> None:
    """Stop the models, so the next round starts them (and shows a status line while they start)."""
    for m in models:
        admin.unload(m)


def growing(texts: list[str]) -> list[str]:
    """The distinct texts a pane showed, in order."""
    return [t for t, _ in itertools.groupby(texts)]


def test_two_models_stream_side_by_side(clients, tmp_path):
    client, admin = clients
    cold(admin, "llama", "qwen")
    frames = list(compare.compare_answers(client, admin, ["llama", "qwen"], False, PROMPT, system="be brief",
                                          temperature=0.2, max_tokens=64, runs_root=tmp_path, poll=0.2))
    first = [f.panes[0] for f in frames]
    assert all(f.panes[0].header == "**A · llama**" and f.panes[1].header == "**B · qwen**" for f in frames)
    assert any(re.fullmatch(r"starting llama\.\.\. \d+s", p.stats) for p in first), [p.stats for p in first[:5]]
    for i in (0, 1):
        texts = growing([f.panes[i].answer for f in frames if f.panes[i].answer])
        assert texts[-1] == ANSWER
        assert len(texts) >= 4, f"pane {i} must fill in several steps (streamed), not at once: {texts}"
        assert all(b.startswith(a) for a, b in itertools.pairwise(texts))
    live = [f.panes[1].stats for f in frames if f.panes[1].answer and f.panes[1].answer != ANSWER]
    assert any(re.fullmatch(r"first token \d+\.\d\ds · \d+\.\d tok/s · \d+ tokens", s) for s in live), live[-3:]
    assert all(f.status.startswith("answering with 2 models") and not f.votable for f in frames[:-1])

    last = frames[-1]
    words = len(ANSWER.split())
    for pane in last.panes:
        assert re.fullmatch(rf"first token \d+\.\d\ds · \d+\.\d tok/s · {words} tokens", pane.stats), pane.stats
    assert last.votable and "vote below" in last.status and last.status.startswith("round 1: 2 answer(s) in ")

    # the round is a row of the session's compare run, not voted yet
    run = store.load(last.session.run, tmp_path)
    assert run.manifest.kind == "compare" and set(run.manifest.models) == {"llama", "qwen"}
    assert run.manifest.models["llama"]["engine"] == "command", "the models' registry entries go in the manifest"
    row = run.rows()["round-0001"]
    assert row["vote"] is None and row["answer_a"] == row["answer_b"] == ANSWER and row["system"] == "be brief"
    assert row["models"] == '["llama", "qwen"]' and row["model_c"] is None and row["tokens_a"] == words
    assert row["ttft_a"] > 0 and row["tps_b"] > 0 and row["temperature"] == 0.2 and row["max_tokens"] == 64

    # the next round of the page session goes in the same run; both models warm, the answers grow side by side
    frames = list(compare.compare_answers(client, admin, ["qwen", "llama"], False, PROMPT, session=last.session,
                                          runs_root=tmp_path))
    both = [f for f in frames if all(p.answer.startswith("echo") and p.answer != ANSWER for p in f.panes)]
    assert len(both) >= 2, "the two answers never grew at the same time: they must stream side by side"
    again = frames[-1]
    assert again.session.run == run.id and again.session.rounds == 2
    assert [p.header for p in again.panes] == ["**A · qwen**", "**B · llama**"]
    assert list(store.load(run.id, tmp_path).rows()) == ["round-0001", "round-0002"]


def test_a_models_error_shows_in_its_column_only(clients, tmp_path):
    client, admin = clients
    frames = list(compare.compare_answers(client, admin, ["qwen", "broken", "llama"], False, "hello there",
                                          runs_root=tmp_path, poll=0.2))
    last = frames[-1]
    assert len(last.panes) == 3
    ok_a, bad, ok_c = last.panes
    assert ok_a.answer == ok_c.answer == "echo: hello there" and "tok/s" in ok_a.stats
    assert bad.answer.startswith("**error:**") and "broken" in bad.answer and "failed after" in bad.stats
    assert "error" not in ok_a.answer + ok_c.answer
    assert not last.votable and "1 failed" in last.status and "saved in run" in last.status
    row = store.load(last.session.run, tmp_path).rows()["round-0001"]
    assert row["error_b"] and row["error_a"] is None and row["error"].startswith("broken: ")
    with pytest.raises(gr.Error, match="exactly 2 models and this round had 3"):
        compare.cast_vote(last.session, "a", tmp_path)


def test_blind_mode_hides_the_names_until_the_vote(clients, tmp_path):
    client, admin = clients
    cold(admin, "llama", "qwen")
    before = compare.standings_table(tmp_path)
    assert before.empty and list(before.columns) == compare.STANDING_HEADERS
    frames = list(compare.compare_answers(client, admin, ["llama", "qwen"], True, "which one am I", poll=0.2,
                                          runs_root=tmp_path, rng=random.Random(7)))
    shown = [x for f in frames for p in f.panes for x in (*p, f.status)]
    assert not [s for s in shown if "llama" in s or "qwen" in s], \
        "a blind round must not name its models before the vote"
    assert any(re.fullmatch(r"starting model [AB]\.\.\. \d+s", s) for s in shown), "a cold model is 'model A/B'"
    last = frames[-1]
    assert [p.header for p in last.panes] == ["**model A**", "**model B**"] and last.votable
    a, b = last.session.current.models
    assert {a, b} == {"llama", "qwen"}

    voted = compare.cast_vote(last.session, "a", tmp_path)
    assert [p.header for p in voted.panes] == [f"**A · {a}**", f"**B · {b}**"]
    assert voted.status == f"vote saved: A is better (A: {a}, B: {b})" and not voted.votable
    row = store.load(voted.session.run, tmp_path).rows()["round-0001"]
    assert row["vote"] == "a" and row["blind"] is True and row["voted_at"] > 0 and row["answer_a"]
    table = compare.standings_table(tmp_path).set_index("model")
    assert table.loc[a, "won"] == 1 and table.loc[b, "lost"] == 1 and table.loc[a, "score"] > table.loc[b, "score"]
    assert table.loc[a, "win rate"] == "100%" and table.index[0] == a

    with pytest.raises(gr.Error, match=r"has its vote already \(A is better\): send a new prompt"):
        compare.cast_vote(voted.session, "b", tmp_path)
    assert store.load(voted.session.run, tmp_path).rows()["round-0001"]["vote"] == "a"

    # a second blind round in the same session, none picked (every text model is a candidate; this seed draws the
    # two that work): "both bad" moves the standings again, as a tie in the score
    frames = list(compare.compare_answers(client, admin, [], True, "again", session=voted.session,
                                          runs_root=tmp_path, rng=random.Random(4)))
    assert frames[-1].session.run == voted.session.run and frames[-1].votable
    compare.cast_vote(frames[-1].session, "bad", tmp_path)
    table = compare.standings_table(tmp_path).set_index("model")
    assert list(table["both bad"]) == [1, 1] and list(table["battles"]) == [2, 2] and table.loc[a, "win rate"] == "75%"
    assert len(store.load(voted.session.run, tmp_path).rows()) == 2


def test_blind_picks_two_of_the_picked_or_of_every_text_model(clients):
    client, _ = clients
    seen = {tuple(compare.choose_models(client, ["llama", "qwen", "broken"], True, random.Random(k)))
            for k in range(20)}
    assert all(len(set(p)) == 2 and set(p) <= {"llama", "qwen", "broken"} for p in seen) and len(seen) > 2
    assert {m for k in range(20) for m in compare.choose_models(client, ["llama"], True, random.Random(k))} == \
        {"llama", "qwen", "broken"}, "fewer than two picked: any text model (never an image model)"


def test_stop_ends_both_streams_at_the_hub(clients, hub, tmp_path):
    client, admin = clients
    admin.load("llama")
    admin.load("qwen")
    long = " ".join(f"w{i}" for i in range(300))
    gen = compare.compare_answers(client, admin, ["llama", "qwen"], False, long, runs_root=tmp_path)
    frame = next(gen)
    while not all(p.answer.startswith("echo") for p in frame.panes):
        frame = next(gen)
    assert {m: hub.models()[m]["in_flight"] for m in ("llama", "qwen")} == {"llama": 1, "qwen": 1}
    gen.close()  # what gradio's stop does to a running generator
    deadline = time.monotonic() + 3
    while any(hub.models()[m]["in_flight"] for m in ("llama", "qwen")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(hub.models()[m]["in_flight"] for m in ("llama", "qwen")), "stop must end both requests"
    row = store.load(frame.session.run, tmp_path).rows()["round-0001"]
    assert row["error_a"] == row["error_b"] == "stopped before the end" and row["answer_a"].startswith("echo")
    with pytest.raises(gr.Error, match="wait until both answers have ended"):
        compare.cast_vote(frame.session, "a", tmp_path)


def test_bad_input_is_refused_with_what_to_do(clients, tmp_path):
    client, admin = clients
    run = lambda picked, blind=False, prompt="hi": list(  # noqa: E731
        compare.compare_answers(client, admin, picked, blind, prompt, runs_root=tmp_path))
    with pytest.raises(gr.Error, match=r"pick 2 to 4 text models to compare \(or tick blind"):
        run(["llama"])
    with pytest.raises(gr.Error, match=r"pick 2 to 4 text models"):
        run(None)
    with pytest.raises(gr.Error, match=r"pick at most 4 models \(5 picked\): untick some"):
        run(["llama", "qwen", "broken", "a", "b"])
    with pytest.raises(gr.Error, match="write a prompt first"):
        run(["llama", "qwen"], prompt="  ")
    with pytest.raises(gr.Error, match="send a prompt to two models first"):
        compare.cast_vote(None, "a", tmp_path)
    with pytest.raises(gr.Error, match="send a prompt to two models first"):
        compare.cast_vote(compare.Session(), "a", tmp_path)
    assert not (tmp_path / "runs").exists() and store.runs(tmp_path).empty, "refused rounds make no run"


def test_the_tab_is_in_the_app(clients, tmp_path):
    client, admin = clients
    demo = build_ui(client, admin, runs_root=tmp_path)
    ids = {c.elem_id for c in demo.blocks.values() if getattr(c, "elem_id", None)}
    assert {"hub-compare-models", "hub-compare-blind", "hub-compare-prompt", "hub-compare-send", "hub-compare-stop",
            "hub-compare-status", "hub-compare-standings", "hub-compare-vote-a", "hub-compare-vote-bad",
            *(f"hub-compare-{part}-{p}" for part in ("col", "head", "answer", "stats") for p in arena.POSITIONS)} \
        <= ids
