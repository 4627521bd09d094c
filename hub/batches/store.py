"""The batch database: files, batches and each batch line's state in SQLite (`<state_dir>/hub.db`, WAL mode), the
files' content under `<state_dir>/files/`.

The schema is versioned with `PRAGMA user_version`: MIGRATIONS is a list of steps, each a list of SQL statements;
`migrate` applies the steps past the database's version in order, each in its own transaction with its new
version. Add a step at the end, never edit one that shipped.

Threads: a Store holds one connection and is not safe to share between threads that use it at the same time; the
hub runs every call of its Store in one worker thread (hub/batches/runner.py: `Db`), so calls are serialized in
the order they were made. The connection is opened with check_same_thread=False only so that tests may use a Store
from the thread that made it.

A line's result is written in the same transaction that marks it done (or failed) and counts it in its batch's
request counts: a line counts as done only once its result is recorded, and only a line still marked running is
recorded (never twice).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

LINE_STATES = ("pending", "running", "done", "failed", "expired", "cancelled")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")

MIGRATIONS: list[list[str]] = [
    [  # 1: files, batches, lines
        """CREATE TABLE files (
            id TEXT PRIMARY KEY, purpose TEXT NOT NULL, filename TEXT NOT NULL, bytes INTEGER NOT NULL,
            created_at INTEGER NOT NULL, path TEXT NOT NULL)""",
        """CREATE TABLE batches (
            id TEXT PRIMARY KEY, status TEXT NOT NULL, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL,
            completion_window TEXT NOT NULL, created_at INTEGER NOT NULL, in_progress_at INTEGER,
            finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER, expired_at INTEGER, expires_at INTEGER,
            cancelling_at INTEGER, cancelled_at INTEGER, output_file_id TEXT, error_file_id TEXT,
            total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
            metadata TEXT, errors TEXT)""",
        f"""CREATE TABLE lines (
            batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE, line INTEGER NOT NULL,
            custom_id TEXT NOT NULL, method TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN {LINE_STATES!r}), result TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (batch_id, line), UNIQUE (batch_id, custom_id))""",
        "CREATE INDEX lines_by_state ON lines (batch_id, state, line)",
    ],
    [  # 2: each line's model, read once from its body (the runner picks lines by model)
        "ALTER TABLE lines ADD COLUMN model TEXT NOT NULL DEFAULT ''",
        "UPDATE lines SET model = coalesce(json_extract(body, '$.model'), '')",
        "CREATE INDEX lines_by_model ON lines (batch_id, state, model, line)",
    ],
]
VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, steps: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Apply the steps past the database's user_version, each in one transaction; the version reached."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(steps):
        raise RuntimeError(f"the database is at schema version {version}, newer than this hub's ({len(steps)}): "
                           "upgrade the hub, or restore a backup made by this version")
    for n, step in enumerate(steps[version:], version + 1):
        with transaction(conn):
            for sql in step:
                conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {n}")
    return len(steps)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error (the connection is in autocommit mode otherwise)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode, WAL journal, foreign keys on, rows as sqlite3.Row."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a commit survives a killed process (not a power cut)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class Store:
    """Files, batches and lines in one SQLite database (see the module's docstring for its threads)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.files_dir = state_dir / "files"
        self.files_dir.mkdir(exist_ok=True)
        self.conn = connect(state_dir / "hub.db")
        migrate(self.conn)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # ---- files ----

    def add_file(self, file_id: str, purpose: str, filename: str, content: bytes, created_at: int) -> dict[str, Any]:
        """Store a file's content under files/ (written and synced first), then its row."""
        row = {"id": file_id, "purpose": purpose, "filename": filename, "bytes": len(content),
               "created_at": created_at, "path": self.write_content(file_id, content)}
        with transaction(self.conn):
            self.conn.execute("INSERT INTO files VALUES (:id, :purpose, :filename, :bytes, :created_at, :path)", row)
        return row

    def file(self, file_id: str) -> dict[str, Any] | None:
        """A file's row, or None."""
        r = self.conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return dict(r) if r else None

    def content(self, file_id: str) -> bytes | None:
        """A file's content, or None."""
        row = self.file(file_id)
        return (self.files_dir / row["path"]).read_bytes() if row else None

    def files(self, purpose: str | None, after: str | None, limit: int, order: str) -> list[dict[str, Any]]:
        """Files by creation time (order asc or desc), after the file `after`, at most `limit`."""
        return self._page("files", "purpose = ?" if purpose else "", (purpose,) if purpose else (), after, limit,
                          order)

    def delete_file(self, file_id: str) -> bool:
        """Forget a file and remove its content; whether it existed."""
        row = self.file(file_id)
        if row is None:
            return False
        with transaction(self.conn):
            self.conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
        (self.files_dir / row["path"]).unlink(missing_ok=True)
        return True

    # ---- batches ----

    def add_batch(self, batch: dict[str, Any], lines: list[tuple[int, str, str, str, str, str]]) -> None:
        """A new batch and its lines (number, custom_id, method, url, body JSON, model), in one transaction."""
        row = {**batch, "metadata": json.dumps(batch.get("metadata")) if batch.get("metadata") is not None else None,
               "total": len(lines)}
        cols = ", ".join(row)
        with transaction(self.conn):
            self.conn.execute(f"INSERT INTO batches ({cols}) VALUES ({', '.join(':' + c for c in row)})", row)
            self.conn.executemany(
                "INSERT INTO lines (batch_id, line, custom_id, method, url, body, model) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(batch["id"], *line) for line in lines])

    def batch(self, batch_id: str) -> dict[str, Any] | None:
        """A batch's row, or None."""
        r = self.conn.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone()
        return dict(r) if r else None

    def batches(self, after: str | None, limit: int, status: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Batches, newest first, after the batch `after`, at most `limit` (only in `status`, if given)."""
        where = f"status IN ({', '.join('?' * len(status))})" if status else ""
        return self._page("batches", where, tuple(status or ()), after, limit, "desc")

    def set_batch(self, batch_id: str, **fields: Any) -> None:
        """Set some of a batch's columns."""
        sets = ", ".join(f"{k} = :{k}" for k in fields)
        with transaction(self.conn):
            self.conn.execute(f"UPDATE batches SET {sets} WHERE id = :id", {**fields, "id": batch_id})

    def _page(self, table: str, where: str, args: tuple, after: str | None, limit: int,
              order: str) -> list[dict[str, Any]]:
        direction, cmp = ("DESC", "<") if order == "desc" else ("ASC", ">")
        clauses, params = ([where] if where else []), list(args)
        if after:
            clauses.append(f"(created_at, id) {cmp} (SELECT created_at, id FROM {table} WHERE id = ?)")
            params.append(after)
        sql = f"SELECT * FROM {table}" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
        sql += f" ORDER BY created_at {direction}, id {direction} LIMIT ?"
        return [dict(r) for r in self.conn.execute(sql, (*params, limit))]

    # ---- lines ----

    def requeue_running(self) -> int:
        """Lines marked running (a hub stopped or killed while they were sent, without their result): pending
        again; how many."""
        with transaction(self.conn):
            return self.conn.execute("UPDATE lines SET state = 'pending' WHERE state = 'running'").rowcount

    def pending_models(self, batch_id: str) -> list[str]:
        """The models that a batch's pending lines name."""
        rows = self.conn.execute("SELECT DISTINCT model FROM lines WHERE batch_id = ? AND state = 'pending'",
                                 (batch_id,))
        return [r[0] for r in rows]

    def claim(self, batch_id: str, model: str, n: int) -> list[dict[str, Any]]:
        """Mark up to n of a batch's pending lines for `model` running (first lines first) and return them."""
        with transaction(self.conn):
            rows = self.conn.execute(
                "UPDATE lines SET state = 'running', attempts = attempts + 1 WHERE rowid IN (SELECT rowid FROM lines "
                "WHERE batch_id = ? AND state = 'pending' AND model = ? ORDER BY line LIMIT ?) "
                "RETURNING line, custom_id, method, url, body, model, attempts", (batch_id, model, n)).fetchall()
        return sorted((dict(r) for r in rows), key=lambda r: r["line"])

    def record(self, batch_id: str, line: int, state: str, result: dict[str, Any] | None) -> bool:
        """A running line's end: done or failed with its result (counted in its batch), or pending again (no
        result: it is tried again). False when the line was not running (recorded already, or expired)."""
        column = {"done": "completed", "failed": "failed"}.get(state)
        with transaction(self.conn):
            changed = self.conn.execute(
                "UPDATE lines SET state = ?, result = ? WHERE batch_id = ? AND line = ? AND state = 'running'",
                (state, json.dumps(result) if result is not None else None, batch_id, line)).rowcount
            if changed and column:
                self.conn.execute(f"UPDATE batches SET {column} = {column} + 1 WHERE id = ?", (batch_id,))
        return bool(changed)

    def close_lines(self, batch_id: str, state: str, error: dict[str, str]) -> dict[str, int]:
        """Every line of a batch not yet done or failed gets `state` (expired, cancelled) with `error`; how many of
        each model's."""
        with transaction(self.conn):
            rows = self.conn.execute(
                "SELECT line, custom_id, model FROM lines WHERE batch_id = ? AND state IN ('pending', 'running')",
                (batch_id,)).fetchall()
            self.conn.executemany(
                "UPDATE lines SET state = ?, result = ? WHERE batch_id = ? AND line = ?",
                [(state, json.dumps({"id": f"batch_req_{batch_id}_{r['line']}", "custom_id": r["custom_id"],
                                     "response": None, "error": error}), batch_id, r["line"]) for r in rows])
        return dict(Counter(r["model"] for r in rows))

    def line_states(self, batch_id: str) -> dict[str, int]:
        """How many of a batch's lines are in each state."""
        rows = self.conn.execute("SELECT state, count(*) FROM lines WHERE batch_id = ? GROUP BY state", (batch_id,))
        return {r[0]: r[1] for r in rows}

    def results(self, batch_id: str, states: Sequence[str]) -> list[str]:
        """The recorded results (JSON lines) of a batch's lines in `states`, in line order."""
        return list(self._results(batch_id, states))

    def _results(self, batch_id: str, states: Sequence[str]) -> Iterator[str]:
        rows = self.conn.execute(
            f"SELECT result FROM lines WHERE batch_id = ? AND state IN ({', '.join('?' * len(states))}) "
            "AND result IS NOT NULL ORDER BY line", (batch_id, *states))
        return (r[0] for r in rows)

    def write_results(self, batch_id: str, states: Sequence[str], file_id: str) -> tuple[str, int] | None:
        """Write the results of a batch's lines in `states` as a JSONL file under files/, one row at a time (an
        image batch's results may not fit in memory together), synced; its stored name and size, or None (and no
        file) when there are none."""
        path, size = self.files_dir / file_id, 0
        with path.open("wb") as f:
            for result in self._results(batch_id, states):
                size += f.write(result.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if not size:
            path.unlink()
            return None
        return path.name, size

    def finish(self, batch_id: str, fields: dict[str, Any], files: list[dict[str, Any]]) -> None:
        """A batch's end: its output and error files' rows (their content is written already) and its fields, in
        one transaction."""
        with transaction(self.conn):
            for row in files:
                self.conn.execute("INSERT INTO files VALUES (:id, :purpose, :filename, :bytes, :created_at, :path)",
                                  row)
            sets = ", ".join(f"{k} = :{k}" for k in fields)
            self.conn.execute(f"UPDATE batches SET {sets} WHERE id = :id", {**fields, "id": batch_id})

    def write_content(self, file_id: str, content: bytes) -> str:
        """Write (and sync) a file's content under files/; its stored name."""
        path = self.files_dir / file_id
        with path.open("wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        return path.name
