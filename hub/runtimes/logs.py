"""Log handling shared by the runtimes: every engine's output ends up in `<state_dir>/logs/<model>.log` (the
process runtime writes it as the engine runs; the docker runtime saves the container's log there before removing
it), and `hub logs` reads its tail."""

from __future__ import annotations

from collections import deque
from pathlib import Path


def tail_file(path: Path, lines: int) -> str:
    """The last `lines` lines of a text file ("" if it does not exist)."""
    try:
        with path.open(errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except FileNotFoundError:
        return ""
