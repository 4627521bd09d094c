"""Compare rounds, votes and standings: models side by side, as the Chatbot Arena ranks them.

A round is one prompt (with its system prompt and settings) sent to 2 to 4 models; its answers sit in positions
A to D. Rounds are kept in runs of kind "compare" (hub/lab/store.py), one row per round, whose cell key is the
round's id: a round is recorded when its answers end (vote None) and again when it gets its vote, and the later
line replaces the earlier one. Columns: cell, round, prompt, system, temperature, max_tokens, blind, models (a JSON
list in A..D order), per position model_x, answer_x, ttft_x, tps_x, tokens_x, total_x, error_x (x in a..d; None
where a round has fewer models), vote ("a", "b", "tie", "bad" or None), voted_at, and error (the round's failures,
so the runs list counts rounds where a model failed).

Votes: only rounds of exactly two models are battles. "both bad" counts as a tie in the score (as the arena does)
and shows in its own column. The score is a Bradley-Terry fit on the Elo scale, computed from the counts of all
votes at once: the same votes give the same standings in any order, unlike online Elo, whose ratings depend on the
order in which the games were played.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from hub.lab import store

Vote = Literal["a", "b", "tie", "bad"]
VOTES: tuple[str, ...] = ("a", "b", "tie", "bad")
VOTE_LABELS: dict[str, str] = {"a": "A is better", "b": "B is better", "tie": "tie", "bad": "both bad"}
POSITIONS = "abcd"
MAX_MODELS = len(POSITIONS)
PER_POSITION = ("model", "answer", "ttft", "tps", "tokens", "total", "error")
VOTE_COLUMNS = ["run", "cell", "model_a", "model_b", "vote", "blind", "voted_at"]
STANDING_COLUMNS = ["model", "score", "win_rate", "battles", "wins", "losses", "ties", "both_bad"]
BASE, SCALE = 1000.0, 400.0  # the Elo scale: score = BASE + SCALE * log10(strength)

Root = str | os.PathLike[str] | None


class Answer(BaseModel):
    """One model's answer in a round, with how fast it came."""

    model_config = ConfigDict(extra="forbid")

    model: str
    answer: str = ""
    ttft: float | None = None    # seconds to the first token
    tps: float | None = None     # decode rate after the first token: (tokens - 1) / (total - ttft)
    tokens: int | None = None    # completion tokens (the engine's usage, else the chunks seen)
    total: float | None = None   # seconds from the request to the end of the answer
    error: str | None = None


class Round(BaseModel):
    """A prompt sent to 2 to 4 models, their answers in A..D order, and its vote once cast."""

    model_config = ConfigDict(extra="forbid")

    id: str
    round: int
    prompt: str
    system: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    blind: bool = False
    answers: list[Answer] = Field(min_length=2, max_length=MAX_MODELS)
    started_at: float = Field(default_factory=time.time)
    vote: Vote | None = None
    voted_at: float | None = None

    @property
    def models(self) -> list[str]:
        """The models in A..D order."""
        return [a.model for a in self.answers]

    def row(self) -> dict[str, Any]:
        """The round as a run's row (the flat columns of this module's docstring)."""
        out: dict[str, Any] = {"cell": self.id, "round": self.round, "prompt": self.prompt, "system": self.system,
                               "temperature": self.temperature, "max_tokens": self.max_tokens, "blind": self.blind,
                               "models": json.dumps(self.models), "started_at": self.started_at}
        for i, pos in enumerate(POSITIONS):
            ans = self.answers[i].model_dump() if i < len(self.answers) else {}
            out.update({f"{field}_{pos}": ans.get(field) for field in PER_POSITION})
        failed = [f"{a.model}: {a.error}" for a in self.answers if a.error]
        out.update(vote=self.vote, voted_at=self.voted_at, error="; ".join(failed) or None)
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any] | pd.Series) -> Round:
        """A round back from its row (a journal line or a table row)."""
        row = {k: (None if _missing(v) else v) for k, v in dict(row).items()}
        answers = [Answer(**{field: row.get(f"{field}_{pos}") for field in PER_POSITION})
                   for pos in POSITIONS if row.get(f"model_{pos}")]
        started = row.get("started_at") or 0.0
        if isinstance(started, pd.Timestamp):  # a table row: the table shows times as datetimes
            started = started.timestamp()
        return cls(id=str(row["cell"]), round=int(row.get("round") or 0), prompt=row.get("prompt") or "",
                   system=row.get("system") or "", temperature=row.get("temperature"),
                   max_tokens=row.get("max_tokens"), blind=bool(row.get("blind")), answers=answers,
                   started_at=started, vote=row.get("vote"), voted_at=row.get("voted_at"))


def _missing(value: Any) -> bool:
    """A table's empty cell (None or NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


# ---- keeping rounds ----

def session_run(run_id: str | None, root: Root = None, name: str = "compare") -> store.Run:
    """The compare run of a page session: the one named, else (the first round, or a run since deleted) a new one.

    The web app keeps one run per page session, created at its first round, with rounds appended: a session's
    rounds are one experiment (the same person comparing models), and the runs list does not fill with one-row
    runs. A session has no end the hub can see (a tab closed, a phone locked), so each recording leaves the run
    whole: its table written and its status done, until the next round appends to it.
    """
    if run_id:
        try:
            run = store.load(run_id, root)
        except KeyError:
            pass
        else:
            if run.manifest.kind == "compare":
                return run
    return store.create("compare", name, root=root, models={})


def hidden_round(rows: dict[str, dict[str, Any]]) -> str | None:
    """The id of a compare run's last round when it is blind and has no vote yet: the one round that can still get
    its vote, whose models no view of the run names until then (older unvoted rounds can no longer get one)."""
    if not rows:
        return None
    last = max(rows.values(), key=lambda r: (int(r.get("round") or 0), r.get("started_at") or 0.0))
    return str(last["cell"]) if last.get("blind") and last.get("vote") not in VOTES else None


def round_models(row: dict[str, Any]) -> list[str]:
    """The models of a round's row, in A..D order."""
    return [m for pos in POSITIONS if isinstance(m := row.get(f"model_{pos}"), str) and m]


def record_round(run: store.Run, rnd: Round,
                 describe: Callable[[list[str]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Record a round (again: its vote replaces the earlier row); models new to the run are added to its manifest
    with `describe(models)` (their registry entries) when given, except those of a blind round awaiting its vote
    (the runs list shows a run's models): they join at its vote, or at the next round. Returns the row as
    recorded."""
    rows = {**run.rows(), rnd.id: rnd.row()}
    hidden = hidden_round(rows)
    named = [m for key, row in rows.items() if key != hidden for m in round_models(row)]
    new = [m for m in dict.fromkeys(named) if m not in run.manifest.models]
    if new:
        entries = describe(new) if describe is not None else {}
        run.save_manifest(models={**run.manifest.models, **{m: entries.get(m, {}) for m in new}})
    row = run.record(rnd.row())
    run.finish("done")
    return row


# ---- votes and standings ----

def votes(root: Root = None, blind_only: bool = False) -> pd.DataFrame:
    """Every voted two-model round of every compare run: run, cell, model_a, model_b, vote, blind, voted_at
    (`blind_only`: only rounds voted before the names were shown, as the arena counts)."""
    found: list[dict[str, Any]] = []
    for run_id in store.runs(root, kind="compare")["id"]:
        try:
            rows = store.load(run_id, root).rows()
        except KeyError:
            continue
        for row in rows.values():
            a, b, vote = row.get("model_a"), row.get("model_b"), row.get("vote")
            if (vote not in VOTES or not isinstance(a, str) or not isinstance(b, str) or not a or not b
                    or row.get("model_c") or (blind_only and not row.get("blind"))):
                continue
            found.append({"run": run_id, "cell": row["cell"], "model_a": a, "model_b": b, "vote": vote,
                          "blind": bool(row.get("blind")), "voted_at": row.get("voted_at")})
    table = pd.DataFrame(found, columns=VOTE_COLUMNS)
    return table.sort_values(["voted_at", "run", "cell"], ignore_index=True, na_position="first")


def bradley_terry(wins: np.ndarray, prior: float = 1.0, tol: float = 1e-10, max_iter: int = 1000) -> np.ndarray:
    """Bradley-Terry strengths from a matrix of wins (`wins[i, j]`: times i beat j; a tie is half a win each way):
    the maximum of the posterior whose prior is `prior` games of each model against a fixed opponent of strength
    1, split half and half. The prior keeps an undefeated model finite and models with no common opponent
    comparable, and makes the log posterior strictly concave: Newton's method on the log strengths (each step at
    most a factor e^2) finds it in a few steps, where MM (Hunter 2004) crawls (a model 1000-0 up stopped 260 points
    short after 10,000 steps)."""
    if not prior > 0:
        raise ValueError(f"prior must be above 0 (it is {prior}): without it an undefeated model has no finite score")
    games = wins + wins.T
    np.fill_diagonal(games, 0.0)
    won = wins.sum(axis=1) - np.diag(wins) + prior / 2
    t = np.zeros(len(wins))
    for _ in range(max_iter if len(t) else 0):
        beat = 0.5 * (1.0 + np.tanh((t[:, None] - t[None, :]) / 2))  # P(i beats j), without overflow
        vs_prior = 0.5 * (1.0 + np.tanh(t / 2))
        grad = won - (games * beat).sum(axis=1) - prior * vs_prior
        curve = games * beat * beat.T
        hess = curve - np.diag(curve.sum(axis=1) + prior * vs_prior * (1.0 - vs_prior))
        step = np.linalg.solve(hess, -grad)
        step *= min(1.0, 2.0 / max(np.max(np.abs(step)), 1e-300))
        t += step
        if np.max(np.abs(step)) < tol:
            break
    return np.exp(t)


def standings(votes_df: pd.DataFrame, prior: float = 1.0) -> pd.DataFrame:
    """Per model: score (Bradley-Terry on the Elo scale, 1000 + 400 log10 strength), win rate (ties and "both bad"
    count half), battles, wins, losses, ties and both_bad; best first. Deterministic: the same votes in any order
    give the same table (online Elo would not)."""
    rows = votes_df[votes_df["vote"].isin(VOTES) & (votes_df["model_a"] != votes_df["model_b"])] \
        if len(votes_df) else votes_df
    if not len(rows):
        return pd.DataFrame({c: pd.Series(dtype=object if c == "model" else float if c in ("score", "win_rate")
                                          else int) for c in STANDING_COLUMNS})
    models = sorted(set(rows["model_a"]) | set(rows["model_b"]))
    at = {m: i for i, m in enumerate(models)}
    n = len(models)
    wins = np.zeros((n, n))
    count = {k: np.zeros(n, dtype=int) for k in ("wins", "losses", "ties", "both_bad")}
    for (a, b, vote), k in rows.groupby(["model_a", "model_b", "vote"]).size().items():
        i, j = at[a], at[b]
        if vote in ("a", "b"):
            w, lo = (i, j) if vote == "a" else (j, i)
            wins[w, lo] += k
            count["wins"][w] += k
            count["losses"][lo] += k
        else:
            wins[i, j] += k / 2
            wins[j, i] += k / 2
            key = "ties" if vote == "tie" else "both_bad"
            count[key][i] += k
            count[key][j] += k
    strength = bradley_terry(wins, prior)
    battles = count["wins"] + count["losses"] + count["ties"] + count["both_bad"]
    table = pd.DataFrame({"model": models, "score": BASE + SCALE * np.log10(strength),
                          "win_rate": (count["wins"] + (count["ties"] + count["both_bad"]) / 2) / battles,
                          "battles": battles, **count})
    return table.sort_values(["score", "model"], ascending=[False, True], ignore_index=True)
