"""The batch runner (hub/batches/runner.py) on its own, with a fake `send` in place of the gateway: answers that
say "later" are tried again, a bug fails only its line, the cap holds, a stopped runner leaves its lines to the
next one, and no line is recorded twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

from hub.batches.runner import MAX_ATTEMPTS, Db, Runner
from hub.batches.store import Store
from tests.helpers import until


async def open_db(tmp_path, lines: int, bid: str = "b1") -> Db:
    db = Db()
    store = await db.open(lambda: Store(tmp_path))
    rows = [(i, f"c{i}", "POST", "/v1/chat/completions", json.dumps({"model": "m", "n": i}), "m")
            for i in range(1, lines + 1)]
    await db.run(store.add_batch, {"id": bid, "status": "in_progress", "endpoint": "/v1/chat/completions",
                                   "input_file_id": "f", "completion_window": "24h", "created_at": 1,
                                   "expires_at": 2**40}, rows)
    return db


async def ended(db: Db, bid: str = "b1") -> dict:
    for _ in range(500):
        b = await db.run(db.store.batch, bid)
        if b["status"] in ("completed", "cancelled", "expired"):
            return b
        await asyncio.sleep(0.01)
    raise AssertionError(f"batch not ended: {b}")


def output(db_store: Store, bid: str, kind: str, b: dict) -> list[dict]:
    fid = b[f"{kind}_file_id"]
    return [json.loads(x) for x in db_store.content(fid).decode().splitlines()] if fid else []


async def test_later_answers_are_tried_again_and_a_bug_fails_only_its_line(tmp_path) -> None:
    db = await open_db(tmp_path, 5)
    calls: Counter[int] = Counter()
    observed: Counter[str] = Counter()

    async def send(path: str, body: bytes) -> tuple[int, bytes, str | None]:
        n = json.loads(body)["n"]
        calls[n] += 1
        if n == 2 and calls[n] < 3:
            return 503, b'{"error": {"message": "starting"}}', None
        if n == 3:
            return 429, b'{"error": {"message": "full"}}', None
        if n == 4:
            raise RuntimeError("a bug")
        if n == 5 and calls[n] <= MAX_ATTEMPTS + 2:  # the hub's own "wait": tried past MAX_ATTEMPTS
            return 503, b'{"error": {"message": "busy", "code": "memory_busy"}}', None
        return 200, json.dumps({"answer": n}).encode(), "req-x"

    runner = Runner(db, send, cap=lambda m: 2, observe=lambda m, s, n: observed.update({s: n}), retry_s=0.001)
    await runner.start()
    b = await ended(db)
    await runner.stop()
    assert b["status"] == "completed" and (b["total"], b["completed"], b["failed"]) == (5, 3, 2)
    assert calls == {1: 1, 2: 3, 3: MAX_ATTEMPTS, 4: 1, 5: MAX_ATTEMPTS + 3}
    done = {x["custom_id"]: x for x in output(db.store, "b1", "output", b)}
    assert done["c1"]["response"] == {"status_code": 200, "request_id": "req-x", "body": {"answer": 1}}
    assert done["c2"]["response"]["body"] == {"answer": 2}
    errors = {x["custom_id"]: x for x in output(db.store, "b1", "error", b)}
    assert errors["c3"]["response"]["status_code"] == 429
    assert errors["c4"]["response"] is None and "a bug" in errors["c4"]["error"]["message"]
    assert observed == {"completed": 3, "failed": 2}
    await db.close()


async def test_the_cap_holds_and_a_stopped_runner_leaves_its_lines_to_the_next(tmp_path) -> None:
    db = await open_db(tmp_path, 10)
    under_way, most, release = 0, 0, asyncio.Event()
    sent: Counter[int] = Counter()

    async def send(path: str, body: bytes) -> tuple[int, bytes, str | None]:
        nonlocal under_way, most
        sent[json.loads(body)["n"]] += 1
        under_way += 1
        most = max(most, under_way)
        try:
            await release.wait()
        finally:
            under_way -= 1
        return 200, b"{}", None

    first = Runner(db, send, cap=lambda m: 3)
    await first.start()
    await until(lambda: under_way == 3)
    await asyncio.sleep(0.05)
    assert most == 3 and await db.run(db.store.line_states, "b1") == {"running": 3, "pending": 7}
    await first.stop()  # the hub stops: the three lines under way have no result
    release.set()
    second = Runner(db, send, cap=lambda m: 3)
    await second.start()
    b = await ended(db)
    await second.stop()
    assert b["completed"] == 10 and most == 3
    assert sorted(x["custom_id"] for x in output(db.store, "b1", "output", b)) == sorted(f"c{i}" for i in range(1, 11))
    assert sum(sent.values()) == 13 and all(sent[i] == 1 for i in range(4, 11)), "only the three sent again"
    await db.close()


async def test_a_cancel_drops_the_lines_waiting_to_be_tried_again(tmp_path) -> None:
    db = await open_db(tmp_path, 2)

    async def send(path: str, body: bytes) -> tuple[int, bytes, str | None]:
        return 429, b'{"error": {"message": "full", "code": "queue_full"}}', None

    runner = Runner(db, send, cap=lambda m: 2, retry_s=5)  # pauses far longer than the test waits
    await runner.start()
    await until(lambda: len(runner.backing_off) == 2)
    await db.run(db.store.set_batch, "b1", status="cancelling", cancelling_at=1)
    runner.wake()
    b = await ended(db)
    await runner.stop()
    assert b["status"] == "cancelled" and b["output_file_id"] is None
    errors = output(db.store, "b1", "error", b)
    assert [e["error"]["code"] for e in errors] == ["batch_cancelled", "batch_cancelled"]
    await db.close()
