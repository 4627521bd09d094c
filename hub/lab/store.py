"""Runs kept as data: one folder per run under the runs dir (`<state_dir>/runs`).

    <run id>/manifest.json   what was run: kind, name, the grid, the models' registry entries, hub version, status
    <run id>/cells.jsonl     the journal: one JSON line per finished cell, appended (and flushed to disk) as it ends
    <run id>/table.parquet   the table, written from the journal when a run stops (done, interrupted or failed)
    <run id>/images/*.png    image cells' images, written before their line

The journal is the truth: a run killed mid-way keeps every cell that ended, its Parquet file is rebuilt from the
journal when the journal is newer, and resuming skips the cells it holds. A cell recorded again (a vote added to a
Compare round, a failed cell retried) replaces its earlier line: the last line of a cell wins.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

RunKind = Literal["text", "image", "compare"]
RunStatus = Literal["running", "done", "interrupted", "failed"]
MANIFEST, JOURNAL, TABLE, IMAGES = "manifest.json", "cells.jsonl", "table.parquet", "images"
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Manifest(BaseModel):
    """A run's manifest.json."""

    model_config = ConfigDict(extra="allow")

    id: str
    kind: RunKind
    name: str = ""
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    status: RunStatus = "running"
    hub_url: str | None = None
    hub_version: str | None = None
    grid: dict[str, Any] | None = None
    models: dict[str, Any] = Field(default_factory=dict)
    cells_total: int | None = None
    cells_done: int = 0
    errors: int = 0


def runs_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Where runs live: `root`, else $HUB_RUNS_DIR, else $HUB_STATE_DIR/runs, else the runs folder of the nearest
    `.hub` state dir in this folder or above it (a notebook's folder sits under the repo), else ./.hub/runs."""
    if root is not None:
        return Path(root).expanduser()
    if env := os.environ.get("HUB_RUNS_DIR"):
        return Path(env).expanduser()
    if env := os.environ.get("HUB_STATE_DIR"):
        return Path(env).expanduser() / "runs"
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / ".hub").is_dir():
            return folder / ".hub" / "runs"
    return here / ".hub" / "runs"


def new_id(name: str = "") -> str:
    """A run id that sorts by time: 20261205-221501-<name>-<4 hex>."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return "-".join(p for p in (stamp, slug, secrets.token_hex(2)) if p)


class Run:
    """One run's folder: its manifest, its journal of cells, its table and images. Thread-safe for recording."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] | None = None

    def __repr__(self) -> str:
        m = self.manifest
        return f"<Run {m.id} {m.kind} {m.status}: {m.cells_done}/{m.cells_total or '?'} cells, {m.errors} errors>"

    @property
    def id(self) -> str:
        return self.manifest.id

    # ---- reading ----

    def rows(self) -> dict[str, dict[str, Any]]:
        """The journal's cells by cell key (the last line of a cell wins), in the order they first ended."""
        with self._lock:
            if self._rows is None:
                self._rows = read_journal(self.path / JOURNAL)
            return dict(self._rows)

    def done(self, retry_errors: bool = False) -> set[str]:
        """Keys of the cells that ended (with `retry_errors`, only those that ended without an error)."""
        return {k for k, r in self.rows().items() if not (retry_errors and r.get("error"))}

    @property
    def table(self) -> pd.DataFrame:
        """The run's table: its Parquet file, or the journal where that is newer (a running or killed run)."""
        parquet, journal = self.path / TABLE, self.path / JOURNAL
        if parquet.exists() and (not journal.exists() or parquet.stat().st_mtime >= journal.stat().st_mtime):
            return pd.read_parquet(parquet)
        return frame(list(self.rows().values()))

    def image_path(self, cell: str | dict[str, Any] | pd.Series) -> Path | None:
        """The file of an image cell (a cell key or a row), None for a cell without an image. Only a file in the
        run's images folder counts: a journal edited to point elsewhere (`../../etc/passwd`) gives None."""
        row = self.rows().get(cell) if isinstance(cell, str) else dict(cell)
        rel = (row or {}).get("image")
        if not isinstance(rel, str) or not rel:
            return None
        path = self.path / rel
        inside = path.resolve().parent == (self.path / IMAGES).resolve()
        return path if inside else None

    def image(self, cell: str | dict[str, Any] | pd.Series) -> Image.Image | None:
        """The image of an image cell, opened (None for a cell without one, or whose file is no image PIL reads)."""
        path = self.image_path(cell)
        if path is None or not path.is_file():
            return None
        try:
            with Image.open(path) as img:
                img.load()
                return img
        except (OSError, ValueError, Image.DecompressionBombError):
            return None

    # ---- writing ----

    def record(self, row: dict[str, Any], image: Image.Image | bytes | None = None) -> dict[str, Any]:
        """Keep one ended cell (`row["cell"]` is its key): its image first, then its journal line, flushed to disk,
        so a cell counts as done only once all of it is kept. Returns the row as recorded."""
        key = str(row["cell"])
        row = {**row, "cell": key, "recorded_at": time.time()}
        if image is not None:
            folder = self.path / IMAGES
            folder.mkdir(exist_ok=True)
            name = f"{safe_name(key)}.png"
            if isinstance(image, bytes):
                atomic_write(folder / name, image)
            else:
                tmp = folder / f".{name}.tmp"
                image.save(tmp, format="PNG")
                os.replace(tmp, folder / name)
            row["image"] = f"{IMAGES}/{name}"
        line = json.dumps(row, default=str, allow_nan=False) + "\n"
        with self._lock:
            with open(self.path / JOURNAL, "ab") as f:
                if f.tell() > 0:  # a line cut short by a kill ends the file: the next one starts on its own
                    with open(self.path / JOURNAL, "rb") as r:
                        r.seek(-1, os.SEEK_END)
                        if r.read(1) != b"\n":
                            line = "\n" + line
                f.write(line.encode())
                f.flush()
                os.fsync(f.fileno())
            if self._rows is None:
                self._rows = read_journal(self.path / JOURNAL)
            else:
                self._rows[key] = row
            self.manifest.cells_done = len(self._rows)
            self.manifest.errors = sum(bool(r.get("error")) for r in self._rows.values())
        return row

    def save_manifest(self, **changes: Any) -> None:
        """Update and write manifest.json (atomically)."""
        with self._lock:
            for k, v in changes.items():
                setattr(self.manifest, k, v)
            self.manifest.updated = time.time()
            data = self.manifest.model_dump_json(indent=2)
        atomic_write(self.path / MANIFEST, data.encode())

    def finish(self, status: RunStatus, order: list[str] | None = None) -> Run:
        """Mark the run done, interrupted or failed, and write its table as Parquet (rows in `order`, the grid's
        cell keys, where given; else in the order the cells ended)."""
        rows = list(self.rows().values())
        if order is not None:
            place = {k: i for i, k in enumerate(order)}
            rows.sort(key=lambda r: place.get(r["cell"], len(place)))
        self.manifest.cells_done = len(rows)
        self.manifest.errors = sum(bool(r.get("error")) for r in rows)
        table = frame(rows)
        tmp = self.path / f".{TABLE}.tmp"
        table.to_parquet(tmp, index=False)
        os.replace(tmp, self.path / TABLE)
        self.save_manifest(status=status)
        return self


def safe_name(key: str) -> str:
    """A cell key as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)[:120]


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file whole or not at all (a reader never sees half of it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_journal(path: Path) -> dict[str, dict[str, Any]]:
    """A journal's rows by cell key; a last line cut short by a kill is skipped, and so is any line that is no
    row (bytes that are not UTF-8 are read as U+FFFD: one damaged line does not hide the others)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return rows
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            with contextlib.suppress(ValueError):
                row = json.loads(line)
                if isinstance(row, dict) and "cell" in row:
                    rows[str(row["cell"])] = row
    return rows


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame whose columns Parquet can hold (values that are lists or dicts become JSON text, and so
    does every value of a column whose rows mix types Arrow cannot hold in one column: 1 and "x", True and 3, an
    integer beyond 64 bits)."""
    table = pd.DataFrame(rows)
    for col in ("started_at", "recorded_at"):
        if col in table.columns:
            table[col] = pd.to_datetime(table[col], unit="s")
    for col in table.columns:
        if table[col].map(lambda v: isinstance(v, list | dict)).any():
            table[col] = table[col].map(lambda v: json.dumps(v) if isinstance(v, list | dict) else v)
        if table[col].dtype == object:
            try:
                pa.array(table[col], from_pandas=True)
            except (pa.ArrowException, OverflowError):
                table[col] = table[col].map(_text)
    return table


def _text(value: Any) -> str | None:
    """A value of a column of mixed types as text (None and NaN stay empty)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None
    return json.dumps(value, default=str)


# ---- the runs dir ----

def create(kind: RunKind, name: str = "", *, root: str | os.PathLike[str] | None = None,
           **fields: Any) -> Run:
    """A new run folder with its manifest (`fields`: Manifest fields such as grid, models, cells_total)."""
    folder = runs_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(8):  # two runs made in one second with one name may draw the same 16 random bits
        run_id = new_id(name)
        path = folder / run_id
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free run id in {folder} after 8 tries")
    run = Run(path, Manifest(id=run_id, kind=kind, name=name, **fields))
    run.save_manifest()
    return run


def load(run_id: str | Run, root: str | os.PathLike[str] | None = None) -> Run:
    """An existing run by id (or a Run, read again from its folder). KeyError names the runs dir when none."""
    if isinstance(run_id, Run):
        return load(run_id.id, run_id.path.parent)
    if not RUN_ID.match(run_id):
        raise KeyError(f"{run_id!r} is not a run id (see hub.lab.runs())")
    path = runs_dir(root) / run_id
    try:
        manifest = Manifest.model_validate_json((path / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise KeyError(f"no run {run_id!r} in {runs_dir(root)} (see hub.lab.runs())") from None
    return Run(path, manifest)


def runs(root: str | os.PathLike[str] | None = None, kind: RunKind | None = None) -> pd.DataFrame:
    """Every run in the runs dir, newest first: id, kind, name, status, created, cells done and total, errors,
    models."""
    cols = ["id", "kind", "name", "status", "created", "cells_done", "cells_total", "errors", "models"]
    found: list[dict[str, Any]] = []
    folder = runs_dir(root)
    for path in folder.iterdir() if folder.is_dir() else ():
        try:
            m = Manifest.model_validate_json((path / MANIFEST).read_bytes())
            created = pd.Timestamp(m.created, unit="s")
        except (OSError, ValueError, OverflowError):  # no manifest, or not a run's (a created time of 1e20)
            continue
        if (kind is not None and m.kind != kind) or pd.isna(created):
            continue
        found.append({"id": m.id, "kind": m.kind, "name": m.name, "status": m.status,
                      "created": created, "cells_done": m.cells_done,
                      "cells_total": m.cells_total, "errors": m.errors, "models": ", ".join(m.models)})
    table = pd.DataFrame(found, columns=cols)
    return table.sort_values("created", ascending=False, ignore_index=True)
