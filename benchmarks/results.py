"""CSV output: one file per scenario kind, rows as dicts, columns in first-seen order."""

from __future__ import annotations

import csv
import platform
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def run_info() -> dict[str, str]:
    """Columns that say where and when a row was measured."""
    return {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.node(),
            "python": platform.python_version()}


def write_csv(rows: Iterable[dict[str, Any]], path: str | Path, info: bool = True) -> Path:
    """Write rows (plus run_info columns) to path; returns the path."""
    rows = list(rows)
    extra = run_info() if info else {}
    rows = [{**r, **extra} for r in rows]
    columns: list[str] = []
    for r in rows:
        columns.extend(k for k in r if k not in columns)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return p
