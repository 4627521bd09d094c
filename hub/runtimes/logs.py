"""Log handling shared by the runtimes: every engine's output ends up in `<state_dir>/logs/<model>.log` (the
process runtime writes it as the engine runs; the docker and ray runtimes save the container's or the node's log
there before the engine goes), and `hub logs` reads its tail."""

from __future__ import annotations

import contextlib
from collections import deque
from pathlib import Path

HEADER = "# hub:"  # the line the hub writes first in a model's log (what it started); kept when a log is saved


def save_log(log_dir: Path, model_id: str, text: str) -> None:
    """Write an engine's whole output as its model's log, after the hub's header line of the log already there."""
    path = log_dir / f"{model_id}.log"
    header = ""
    with contextlib.suppress(OSError):
        header = next((ln for ln in path.read_text().splitlines(keepends=True) if ln.startswith(HEADER)), "")
    log_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith(HEADER)))


def tail_file(path: Path, lines: int) -> str:
    """The last `lines` lines of a text file ("" if it does not exist)."""
    try:
        with path.open(errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except FileNotFoundError:
        return ""
