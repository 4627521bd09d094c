"""The batch database (hub/batches/store.py) on its own: migrations from an empty database and from the version
before, WAL mode, and the line rules (claimed before sent, recorded once, running lines pending again after a
restart)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from hub.batches.store import MIGRATIONS, VERSION, Store, connect, migrate


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_migrations_from_an_empty_database(tmp_path) -> None:
    s = Store(tmp_path)
    assert s.conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"files", "batches", "lines"} <= {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master")}
    assert "model" in columns(s.conn, "lines") and "attempts" in columns(s.conn, "lines")
    s.close()
    again = Store(tmp_path)  # nothing to apply the second time
    assert again.conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    again.close()


def test_migration_from_the_version_before_keeps_the_lines(tmp_path) -> None:
    conn = connect(tmp_path / "hub.db")
    assert migrate(conn, MIGRATIONS[:-1]) == VERSION - 1
    conn.execute("INSERT INTO batches (id, status, endpoint, input_file_id, completion_window, created_at) "
                 "VALUES ('b', 'in_progress', '/v1/chat/completions', 'f', '24h', 1)")
    conn.execute("INSERT INTO lines (batch_id, line, custom_id, method, url, body) VALUES "
                 "('b', 1, 'c1', 'POST', '/v1/chat/completions', ?)", (json.dumps({"model": "echo"}),))
    conn.close()
    s = Store(tmp_path)
    assert s.conn.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert [dict(r) for r in s.conn.execute("SELECT custom_id, model, state FROM lines")] == [
        {"custom_id": "c1", "model": "echo", "state": "pending"}]
    s.close()


def test_a_database_newer_than_the_hub_is_refused(tmp_path) -> None:
    conn = connect(tmp_path / "hub.db")
    conn.execute(f"PRAGMA user_version = {VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this hub"):
        migrate(conn)


def test_a_failed_migration_step_leaves_the_version_before(tmp_path) -> None:
    conn = connect(tmp_path / "hub.db")
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, [MIGRATIONS[0], ["CREATE TABLE x (a)", "NOT SQL"]])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "x" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}


def make_batch(s: Store, n: int, bid: str = "b1") -> None:
    s.add_batch({"id": bid, "status": "in_progress", "endpoint": "/v1/chat/completions", "input_file_id": "f",
                 "completion_window": "24h", "created_at": 1},
                [(i, f"c{i}", "POST", "/v1/chat/completions", json.dumps({"model": "m" if i % 2 else "n"}),
                  "m" if i % 2 else "n") for i in range(1, n + 1)])


def test_lines_are_claimed_in_order_recorded_once_and_counted(tmp_path) -> None:
    s = Store(tmp_path)
    make_batch(s, 6)
    assert sorted(s.pending_models("b1")) == ["m", "n"]
    got = s.claim("b1", "m", 2)
    assert [r["line"] for r in got] == [1, 3] and all(r["attempts"] == 1 for r in got)
    assert s.line_states("b1") == {"pending": 4, "running": 2}
    assert s.record("b1", 1, "done", {"custom_id": "c1"})
    assert not s.record("b1", 1, "done", {"custom_id": "c1"}), "a line is recorded once"
    assert s.record("b1", 3, "failed", {"custom_id": "c3"})
    b = s.batch("b1")
    assert (b["total"], b["completed"], b["failed"]) == (6, 1, 1)
    assert s.results("b1", ("done",)) == [json.dumps({"custom_id": "c1"})]
    s.close()


def test_running_lines_are_pending_again_after_a_restart_and_the_rest_can_be_closed(tmp_path) -> None:
    s = Store(tmp_path)
    make_batch(s, 4)
    s.claim("b1", "n", 5)  # lines 2 and 4: sent, the hub killed before their answers
    s.close()
    s = Store(tmp_path)
    assert s.requeue_running() == 2 and s.line_states("b1") == {"pending": 4}
    s.claim("b1", "m", 1)
    assert s.record("b1", 1, "done", {"custom_id": "c1"})
    assert s.close_lines("b1", "expired", {"code": "batch_expired", "message": "late"}) == {"m": 1, "n": 2}
    assert s.line_states("b1") == {"done": 1, "expired": 3}
    errors = [json.loads(r) for r in s.results("b1", ("expired",))]
    assert [e["custom_id"] for e in errors] == ["c2", "c3", "c4"] and errors[0]["error"]["code"] == "batch_expired"
    assert errors[0]["response"] is None
    s.close()


def test_files_are_kept_listed_in_pages_and_deleted(tmp_path) -> None:
    s = Store(tmp_path)
    for i in range(3):
        s.add_file(f"file-{i}", "batch", f"in{i}.jsonl", b"x" * i, created_at=100 + i)
    assert [f["id"] for f in s.files(None, None, 10, "desc")] == ["file-2", "file-1", "file-0"]
    assert [f["id"] for f in s.files(None, "file-2", 1, "desc")] == ["file-1"]
    assert [f["id"] for f in s.files("batch", "file-0", 10, "asc")] == ["file-1", "file-2"]
    assert s.content("file-2") == b"xx" and s.file("file-2")["bytes"] == 2
    assert s.delete_file("file-2") and not s.delete_file("file-2")
    assert s.content("file-2") is None and not (tmp_path / "files" / "file-2").exists()
    s.close()


def test_batch_metadata_has_openais_limits():
    import pydantic

    from hub.batches.shapes import BatchCreate

    ok = {"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    assert BatchCreate(**ok, metadata={"k" * 64: "v" * 512}).metadata
    for bad in ({"k" * 65: "v"}, {"k": "v" * 513}, {f"k{i}": "v" for i in range(17)}, {"k": 1}):
        with pytest.raises(pydantic.ValidationError):
            BatchCreate(**ok, metadata=bad)
