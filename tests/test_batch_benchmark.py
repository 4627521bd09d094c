"""benchmarks/batch_priority.py in small: interactive requests keep their latency while a batch runs on their
model (within the issue's 1.5x of their latency alone), and wait behind the same lines sent as ordinary requests."""

from __future__ import annotations

import csv

from benchmarks.batch_priority import main, parser, report, run_batch_priority


def test_interactive_latency_holds_while_a_batch_runs_and_not_under_a_flood(tmp_path) -> None:
    a = parser().parse_args(["--lines", "80", "--requests", "6", "--delay", "0.2", "--places", "3", "--flood", "8"])
    rows = {r["phase"]: r for r in run_batch_priority(a)}
    assert set(rows) == {"alone", "batch", "flood (no priority)"}
    assert rows["batch"]["lines_done_meanwhile"] > 0, "the batch ran during the phase"
    assert rows["batch"]["p50_vs_alone"] < 1.5, report(list(rows.values()))
    assert rows["flood (no priority)"]["p50_s"] > rows["batch"]["p50_s"], report(list(rows.values()))
    out = tmp_path / "bp.csv"
    assert main(["--lines", "10", "--requests", "2", "--delay", "0.05", "--places", "2", "--flood", "4",
                 "--out", str(out)]) == 0
    assert [r["phase"] for r in csv.DictReader(out.open())] == ["alone", "batch", "flood (no priority)"]
