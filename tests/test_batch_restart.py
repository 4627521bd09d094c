"""A hub killed with SIGKILL in the middle of a batch, started again on the same state dir, finishes the batch:
every line recorded exactly once, and only the lines that were under way at the kill sent to the engine twice."""

from __future__ import annotations

import json
from collections import Counter

from tests.conftest import start_hub, still_running, wait_for
from tests.helpers import client, text_model

LINES, PLACES = 60, 4


def test_a_hub_killed_mid_batch_carries_on_and_records_every_line_once(tmp_path) -> None:
    served = tmp_path / "served.txt"
    registry = text_model("echo", "--delay", "0.2", "--record", str(served), more=f"max_concurrency = {PLACES}")
    first = start_hub(tmp_path, registry)
    c = client(first)
    lines = [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "echo", "messages": [{"role": "user", "content": f"prompt {i}"}]}}
             for i in range(LINES)]
    f = c.files.create(file=("in.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode()), purpose="batch")
    bid = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
    wait_for(lambda: c.batches.retrieve(bid).request_counts.completed >= 10, "10 lines done", 60)
    engines = first.engine_procs()
    first.proc.kill()
    first.proc.wait(10)
    assert not still_running(engines, 30), "the engine follows its hub (PR_SET_PDEATHSIG)"

    second = start_hub(tmp_path, registry)
    try:
        c = client(second)
        wait_for(lambda: c.batches.retrieve(bid).status == "completed", "the batch completed after the restart", 120,
                 every=0.2)
        b = c.batches.retrieve(bid)
        assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (LINES, LINES, 0)
        out = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]
        assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(LINES)), "each line once"
        assert all(x["response"]["body"]["choices"][0]["message"]["content"] == f"echo: prompt {x['custom_id'][4:]}"
                   for x in out)
        sent = Counter(served.read_text().splitlines())
        assert set(sent) == {f"echo: prompt {i}" for i in range(LINES)}
        again = sum(sent.values()) - LINES
        assert 0 <= again <= PLACES, f"only the lines under way at the kill are sent again: {again} were"
        assert "sent again" in second.log.read_text()
    finally:
        second.stop_leaving_nothing()
