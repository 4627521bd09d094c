"""The Compare tab: one prompt to 2 to 4 text models at once, the answers streamed side by side with their speed,
a blind mode that hides two randomly picked models until a vote, and the standings of every vote so far.

Each model's stream runs in its own thread; the handler yields every pane together about ten times a second, so
a slow or failing model never holds up the others. Stop ends the handler, and each thread closes its stream at its
next chunk (a request still waiting for a cold model is closed when its answer begins). Rounds and votes are kept
as a compare run (hub/lab/arena.py says what a row holds, and why one run per page session).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import gradio as gr
import openai
import pandas as pd
from pydantic import BaseModel

from hub.lab import arena
from hub.lab.runner import describe_models
from hub.ui.clients import SDK_ERRORS, Admin, AdminError
from hub.ui.common import POLL_S, model_choices, status_line, ui_error

TICK_S = 0.1
LETTERS = "ABCD"
BLIND_INFO = "blind: two random models, names hidden until you vote"
STANDING_HEADERS = ["model", "score", "win rate", "battles", "won", "lost", "ties", "both bad"]
Root = str | os.PathLike[str] | None


class Session(BaseModel):
    """A page session's compare state: its run (made at the first round), the rounds so far, the last round."""

    run: str | None = None
    rounds: int = 0
    current: arena.Round | None = None
    ended: bool = False  # the current round's answers all ended and it is recorded

    @property
    def votable(self) -> bool:
        """Whether the current round takes a vote: two answers, both ended without an error, no vote yet."""
        rnd = self.current
        return bool(self.ended and rnd and len(rnd.answers) == 2 and rnd.vote is None
                    and not any(a.error for a in rnd.answers))


class Pane(NamedTuple):
    """One answer column as shown: its header, the answer so far and the stats line under it."""

    header: str
    answer: str
    stats: str


class Frame(NamedTuple):
    """What the tab shows at one moment: the status line, the answer panes (A..D), whether votes are open."""

    status: str
    panes: list[Pane]
    votable: bool
    session: Session


class CompareTab(NamedTuple):
    """What the app fills in on page load: the text-model multiselect."""

    models: gr.Dropdown


def build(client: openai.OpenAI, admin: Admin, notes: dict[str, str] | None = None,
          runs_root: Root = None) -> CompareTab:
    """The Compare tab's components and events (inside the app's Blocks)."""
    session = gr.State(None)
    with gr.Tab("Compare", id="compare") as tab:
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=260):
                models = gr.Dropdown(label="text models (2 to 4)", choices=[], multiselect=True,
                                     max_choices=arena.MAX_MODELS, elem_id="hub-compare-models")
                note = gr.Markdown("", visible=False, elem_classes=["hub-note"], elem_id="hub-compare-note")
            with gr.Column(scale=2, min_width=220):
                blind = gr.Checkbox(label=BLIND_INFO, value=False, elem_id="hub-compare-blind")
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(label="prompt", lines=2, scale=5, min_width=220, elem_id="hub-compare-prompt",
                                placeholder="one prompt to every model (Shift+Enter sends)")
            with gr.Column(scale=1, min_width=100):
                send = gr.Button("send", variant="primary", elem_id="hub-compare-send")
                stop = gr.Button("stop", variant="stop", elem_id="hub-compare-stop")
        with gr.Accordion("system prompt and settings", open=False, elem_id="hub-compare-settings"):
            system = gr.Textbox(label="system prompt", lines=2, placeholder="optional",
                                elem_id="hub-compare-system")
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature", min_width=200)
                max_tokens = gr.Slider(16, 4096, value=512, step=16, label="max tokens", min_width=200)
        status = gr.Markdown("", elem_classes=["hub-status"], elem_id="hub-compare-status")
        cols, parts = [], []
        with gr.Row(equal_height=False, elem_id="hub-compare-answers"):
            for i, pos in enumerate(arena.POSITIONS):
                with gr.Column(visible=i < 2, min_width=240, elem_id=f"hub-compare-col-{pos}") as col:
                    head = gr.Markdown(f"**model {LETTERS[i]}**", elem_id=f"hub-compare-head-{pos}",
                                       elem_classes=["hub-compare-head"])
                    answer = gr.Markdown("", container=True, padding=True, min_height=120, max_height=460,
                                         buttons=["copy"], elem_id=f"hub-compare-answer-{pos}")
                    stats = gr.Markdown("", elem_classes=["hub-compare-stats"], elem_id=f"hub-compare-stats-{pos}")
                cols.append(col)
                parts += [head, answer, stats]
        with gr.Row(elem_id="hub-compare-votes"):
            buttons = [gr.Button(label, interactive=False, min_width=150, elem_id=f"hub-compare-vote-{v}")
                       for v, label in arena.VOTE_LABELS.items()]
        table = gr.Dataframe(lambda: standings_table(runs_root), headers=STANDING_HEADERS, interactive=False,
                             label="standings: every vote so far (score: Bradley-Terry, Elo scale)",
                             elem_id="hub-compare-standings")

    models.change(lambda ms: notes_update(ms, notes), models, note)
    outs = [status, session, *cols, *parts, *buttons]

    def answer(picked, is_blind, text, sys_prompt, temp, max_tok, state) -> Iterator[tuple]:
        for frame in compare_answers(client, admin, picked, is_blind, text, sys_prompt, temp, int(max_tok),
                                     state, runs_root):
            yield shown(frame)

    ins = [models, blind, prompt, system, temperature, max_tokens, session]
    ev1 = send.click(answer, ins, outs, show_progress="hidden")
    ev2 = prompt.submit(answer, ins, outs, show_progress="hidden")
    stop.click(None, None, None, cancels=[ev1, ev2])

    def describe(models: list[str]) -> dict[str, Any]:
        return describe_models(client, models)[0]

    def voter(vote: str):
        return lambda state: (*shown(cast_vote(state, vote, runs_root, describe)), standings_table(runs_root))

    for vote, button in zip(arena.VOTE_LABELS, buttons, strict=True):
        button.click(voter(vote), session, [*outs, table])
    tab.select(lambda: standings_table(runs_root), None, table, show_progress="hidden")
    return CompareTab(models)


def shown(frame: Frame) -> tuple:
    """A frame as the tab's outputs: status, session, the four columns, their header/answer/stats, vote buttons."""
    cols = [gr.Column(visible=i < len(frame.panes)) for i in range(arena.MAX_MODELS)]
    parts = [x for i in range(arena.MAX_MODELS) for x in (frame.panes[i] if i < len(frame.panes) else ("", "", ""))]
    return (frame.status, frame.session, *cols, *parts,
            *(gr.Button(interactive=frame.votable) for _ in arena.VOTE_LABELS))


def notes_update(picked: list[str] | None, notes: dict[str, str] | None) -> Any:
    """The picked models' notes (their registry descriptions), hidden when none has one."""
    lines = [f"**{m}**: {(notes or {})[m]}" for m in picked or [] if (notes or {}).get(m)]
    return gr.Markdown("\n\n".join(lines), visible=bool(lines))


# ---- what a pane shows ----

def header(rnd: arena.Round, i: int) -> str:
    """A pane's header: "model A" while blind and not voted, else the letter and the model."""
    if rnd.blind and rnd.vote is None:
        return f"**model {LETTERS[i]}**"
    return f"**{LETTERS[i]} · {rnd.answers[i].model}**"


def stats_line(ans: arena.Answer) -> str:
    """The line under an answer, e.g. "first token 0.21s · 38.5 tok/s · 64 tokens" (what is known so far)."""
    parts = []
    if ans.ttft is not None:
        parts.append(f"first token {ans.ttft:.2f}s")
    if ans.tps is not None:
        parts.append(f"{ans.tps:.1f} tok/s")
    if ans.tokens:
        parts.append(f"{ans.tokens} tokens")
    if ans.error and ans.total is not None:
        parts.append(f"failed after {ans.total:.1f}s")
    return " · ".join(parts)


def hide(text: str, rnd: arena.Round) -> str:
    """Text about a blind round with the models' names replaced by their letters (until the vote)."""
    if rnd.blind and rnd.vote is None:
        for i, ans in sorted(enumerate(rnd.answers), key=lambda p: -len(p[1].model)):
            text = text.replace(ans.model, f"model {LETTERS[i]}")
    return text


def panes(rnd: arena.Round, waiting: dict[int, str] | None = None) -> list[Pane]:
    """The round's panes; `waiting` holds the status line of panes still waiting for their first token."""
    out = []
    for i, ans in enumerate(rnd.answers):
        text = ans.answer or ("(the model returned no text)" if ans.total is not None and not ans.error else "")
        if ans.error:
            text = f"{text}\n\n**error:** {hide(ans.error, rnd)}" if text else f"**error:** {hide(ans.error, rnd)}"
        out.append(Pane(header(rnd, i), text, (waiting or {}).get(i) or stats_line(ans)))
    return out


def standings_table(root: Root = None) -> pd.DataFrame:
    """The standings as the tab shows them: score rounded, win rate in percent."""
    table = arena.standings(arena.votes(root))
    shown_ = pd.DataFrame({"model": table["model"], "score": table["score"].round().astype(int),
                           "win rate": (table["win_rate"] * 100).round().astype(int).astype(str) + "%",
                           "battles": table["battles"], "won": table["wins"], "lost": table["losses"],
                           "ties": table["ties"], "both bad": table["both_bad"]})
    return shown_[STANDING_HEADERS]


# ---- handlers ----

def choose_models(client: openai.OpenAI, picked: list[str] | None, blind: bool,
                  rng: random.Random | None = None) -> list[str]:
    """The models of a round in A..D order: the picked ones, or (blind) two at random from them (from every text
    model when fewer than two are picked)."""
    picked = list(dict.fromkeys(picked or []))
    if blind:
        pool = picked if len(picked) >= 2 else model_choices(client).get("text", [])
        if len(pool) < 2:
            raise gr.Error(f"blind mode needs 2 text models and the hub has {len(pool)}: register another in "
                           "models.toml")
        return (rng or random.Random()).sample(pool, 2)
    if len(picked) < 2:
        raise gr.Error("pick 2 to 4 text models to compare (or tick blind: the hub picks two at random)")
    if len(picked) > arena.MAX_MODELS:
        raise gr.Error(f"pick at most {arena.MAX_MODELS} models ({len(picked)} picked): untick some")
    return picked


class _Stream:
    """One model's answer as it streams, in its own thread: it fills `ans` and sets `changed` at each chunk."""

    def __init__(self, client: openai.OpenAI, ans: arena.Answer, messages: list[dict[str, str]],
                 settings: dict[str, Any], stop: threading.Event, changed: threading.Event) -> None:
        self.client, self.ans, self.messages, self.settings = client, ans, messages, settings
        self.stop, self.changed = stop, changed
        self.done, self.t0 = False, time.perf_counter()
        threading.Thread(target=self._run, name=f"ui-compare-{ans.model}", daemon=True).start()

    def _run(self) -> None:
        ans, stream, chunks = self.ans, None, 0
        try:
            stream = self.client.chat.completions.create(model=ans.model, messages=self.messages, stream=True,
                                                         stream_options={"include_usage": True}, **self.settings)
            for chunk in stream:
                if self.stop.is_set():
                    break
                for choice in chunk.choices[:1]:
                    if choice.delta.content:
                        if ans.ttft is None:
                            ans.ttft = time.perf_counter() - self.t0
                        ans.answer += choice.delta.content
                        chunks += 1
                        ans.tokens, ans.tps = chunks, self.rate(chunks)
                if chunk.usage is not None:  # the last chunk: the engine's own count
                    ans.tokens = chunk.usage.completion_tokens
                self.changed.set()
            else:
                ans.tps = self.rate(ans.tokens or 0)
        except (*SDK_ERRORS, AdminError) as err:
            ans.error = ui_error(err).message
        except Exception as err:  # shown in this model's pane; the others go on
            ans.error = f"{type(err).__name__}: {err}"
        finally:
            if stream is not None:
                stream.close()
            if self.stop.is_set() and not ans.error:
                ans.error = "stopped before the end"
            ans.total = time.perf_counter() - self.t0
            self.done = True
            self.changed.set()

    def rate(self, tokens: int) -> float | None:
        """Tokens per second after the first token, None until there are two."""
        elapsed = time.perf_counter() - self.t0 - (self.ans.ttft or 0.0)
        return (tokens - 1) / elapsed if self.ans.ttft is not None and tokens > 1 and elapsed > 0 else None


def _states(admin: Admin) -> dict[str, dict[str, Any]]:
    """Every model's entry from /hub/models, its state and a download's progress ({} when the hub cannot say)."""
    try:
        return {m["id"]: m for m in admin.models()["data"]}
    except (AdminError, KeyError, TypeError, ValueError):
        return {}


def compare_answers(client: openai.OpenAI, admin: Admin, picked: list[str] | None, blind: bool, prompt: str,
                    system: str = "", temperature: float = 0.7, max_tokens: int = 512,
                    session: Session | None = None, runs_root: Root = None, rng: random.Random | None = None,
                    tick: float = TICK_S, poll: float = POLL_S) -> Iterator[Frame]:
    """Send the prompt to the models at once; yield frames with every answer so far (a status line per model
    while it starts), then record the round in the session's compare run."""
    if not (prompt or "").strip():
        raise gr.Error("write a prompt first")
    chosen = choose_models(client, picked, blind, rng)
    session = (session or Session()).model_copy(deep=True)
    run = arena.session_run(session.run, runs_root)
    n = session.rounds + 1
    rnd = arena.Round(id=f"round-{n:04d}", round=n, prompt=prompt, system=(system or "").strip(),
                      temperature=float(temperature), max_tokens=int(max_tokens), blind=bool(blind),
                      answers=[arena.Answer(model=m) for m in chosen])
    session.run, session.rounds, session.current, session.ended = run.id, n, rnd, False
    messages = [{"role": "system", "content": rnd.system}] if rnd.system else []
    messages.append({"role": "user", "content": prompt})
    settings = {"temperature": rnd.temperature, "max_tokens": rnd.max_tokens}
    stop, changed = threading.Event(), threading.Event()
    streams = [_Stream(client, ans, messages, settings, stop, changed) for ans in rnd.answers]
    t0 = time.monotonic()
    states: dict[str, dict[str, Any]] = {}
    polled = 0.0
    try:
        while not all(s.done for s in streams):
            changed.wait(tick)  # a new chunk wakes it at once; the sleep below keeps to one frame a tick
            changed.clear()
            now = time.monotonic()
            if now - polled >= poll and any(s.ans.ttft is None and not s.done for s in streams):
                states, polled = _states(admin), now
            waiting = {i: status_line(hide(s.ans.model, rnd), states.get(s.ans.model), now - t0, "waiting for")
                       for i, s in enumerate(streams) if s.ans.ttft is None and not s.done}
            yield Frame(f"answering with {len(streams)} models... {now - t0:.0f}s", panes(rnd, waiting), False,
                        session)
            time.sleep(max(0.0, tick - (time.monotonic() - now)))
        session.ended = True
        record(client, run, rnd)
    finally:
        if not session.ended:  # stopped: keep what came, marked as such
            stop.set()
            for s in streams:
                if not s.done:
                    s.ans.error, s.ans.total = "stopped before the end", time.perf_counter() - s.t0
            record(client, run, rnd, quiet=True)
    took = time.monotonic() - t0
    failed = sum(bool(a.error) for a in rnd.answers)
    status = f"round {n}: {len(rnd.answers) - failed} answer(s) in {took:.1f}s"
    status += f", {failed} failed" if failed else ""
    status += ": which is better? vote below" if session.votable else f" (saved in run {run.id})"
    yield Frame(status, panes(rnd), session.votable, session)


def record(client: openai.OpenAI, run: Any, rnd: arena.Round, quiet: bool = False) -> None:
    """Record the round in its run (the models' registry entries go in the manifest the first time)."""
    try:
        arena.record_round(run, rnd, describe=lambda ms: describe_models(client, ms)[0])
    except OSError as err:
        if not quiet:
            raise gr.Error(f"could not save the round in {run.path}: {err} (is the disk full or read-only?)") from None


def cast_vote(session: Session | None, vote: str, runs_root: Root = None,
              describe: Callable[[list[str]], dict[str, Any]] | None = None) -> Frame:
    """Record the vote on the session's last round and reveal its models (a blind round's join the run's manifest
    now, with `describe(models)`, their registry entries). One vote per round."""
    if session is None or session.current is None:
        raise gr.Error("send a prompt to two models first, then vote on their answers")
    session = session.model_copy(deep=True)
    rnd = session.current
    assert rnd is not None
    if vote not in arena.VOTES:
        raise gr.Error(f"unknown vote {vote!r}: one of {', '.join(arena.VOTES)}")
    if rnd.vote is not None:
        raise gr.Error(f"this round has its vote already ({arena.VOTE_LABELS[rnd.vote]}): send a new prompt to "
                       "vote again")
    if not session.ended:
        raise gr.Error("wait until both answers have ended, then vote (or send the prompt again if you stopped it)")
    if len(rnd.answers) != 2:
        raise gr.Error(f"votes compare exactly 2 models and this round had {len(rnd.answers)}: pick 2 (or tick "
                       "blind) and send again")
    if any(a.error for a in rnd.answers):
        raise gr.Error("a model failed in this round, so there is nothing to compare: send the prompt again")
    rnd.vote, rnd.voted_at = vote, time.time()  # type: ignore[assignment]
    run = arena.session_run(session.run, runs_root)
    session.run = run.id
    try:
        arena.record_round(run, rnd, describe)
    except OSError as err:
        rnd.vote = rnd.voted_at = None
        raise gr.Error(f"could not save the vote in {run.path}: {err} (is the disk full or read-only?)") from None
    a, b = rnd.models
    return Frame(f"vote saved: {arena.VOTE_LABELS[vote]} (A: {a}, B: {b})", panes(rnd), False, session)
