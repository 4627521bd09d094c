"""A download job's public shape (the JSON of GET /hub/downloads) and the one status line that the CLI, the 503
of a request waiting for a downloading model and the web app show ("12.3/57.7 GB, 95 MB/s, 9m left").

A leaf: it imports nothing of the hub, so that the manager, the CLI and the web app can all read it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["queued", "checking", "downloading", "done", "failed", "cancelled"]
FINISHED = frozenset({"done", "failed", "cancelled"})


@dataclass(eq=False)
class Job:
    """One download of a repo at a revision into one cache, shared by every caller (API, CLI, web app, first
    requests). Byte and file counts are of what this pull downloads: files already in the cache are left out."""

    id: str
    repo: str
    revision: str | None
    cache_dir: str
    models: list[str]
    status: Status = "queued"
    bytes_done: int = 0
    bytes_total: int | None = None  # known once the dry run has listed the files
    files_done: int = 0
    files_total: int | None = None
    cached_files: int = 0  # wanted files found in the cache already
    speed_bps: float | None = None
    eta_s: float | None = None
    error: str | None = None
    error_code: str | None = None  # repo_not_found, unauthorized, gated, revision_not_found, network, disk_full ...
    commit: str | None = None
    path: str | None = None  # the snapshot folder, once done
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def running(self) -> bool:
        """Whether the job has not finished yet."""
        return self.status not in FINISHED

    def finish(self, status: Status, error: str | None = None, code: str | None = None) -> None:
        """Mark the job finished (once; later calls change nothing) and wake its waiters."""
        if not self.running:
            return
        self.status, self.error, self.error_code = status, error, code
        self.finished_at = time.time()
        self.speed_bps, self.eta_s = (self.speed_bps, 0.0) if status == "done" else (None, None)
        self.finished.set()

    def apply(self, event: dict[str, Any]) -> None:
        """Take one progress line of the worker (hub/downloads/worker.py) into the job."""
        kind = event.get("event")
        if kind == "checking":
            self.status = "checking"
        elif kind == "plan":
            self.status = "downloading"
            self.commit = event.get("commit")
            self.bytes_total, self.files_total = int(event["bytes_total"]), int(event["files_total"])
            self.cached_files = int(event.get("cached_files", 0))
        elif kind == "progress":
            self.bytes_done = int(event.get("bytes_done", self.bytes_done))
            self.files_done = int(event.get("files_done", self.files_done))
            self.speed_bps, self.eta_s = event.get("speed_bps"), event.get("eta_s")
        elif kind == "done":
            self.path = event.get("path")
            self.bytes_done = self.bytes_total if self.bytes_total is not None else self.bytes_done
            self.files_done = self.files_total if self.files_total is not None else self.files_done
        elif kind == "error":
            self.error, self.error_code = event.get("message"), event.get("code")

    def to_json(self) -> dict[str, Any]:
        """The job as GET /hub/downloads lists it."""
        return {"object": "hub.download", "id": self.id, "repo": self.repo, "revision": self.revision,
                "models": list(self.models), "status": self.status, "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total, "files_done": self.files_done, "files_total": self.files_total,
                "cached_files": self.cached_files, "speed_bps": self.speed_bps, "eta_s": self.eta_s,
                "error": self.error, "error_code": self.error_code, "commit": self.commit, "path": self.path,
                "cache_dir": self.cache_dir, "created_at": self.created_at, "finished_at": self.finished_at}


def format_bytes(n: float) -> str:
    """Bytes in decimal units, as Hugging Face shows sizes: 950 B, 12.3 MB, 57.7 GB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover - the loop returns at TB


def format_duration(seconds: float) -> str:
    """A short time left: 45s, 9m, 1h20m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{round(s / 60)}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def describe_download(job: dict[str, Any]) -> str:
    """A job's progress in one line: "12.3/57.7 GB, 95 MB/s, 9m left" (the unit of the total is shared), or what it
    does before its sizes are known ("checking"), or how it ended."""
    status = job.get("status")
    if status in ("queued", "checking"):
        return "checking what to download"
    if status == "failed":
        return f"failed: {job.get('error') or 'unknown error'}"
    if status == "cancelled":
        return "cancelled"
    total, done = job.get("bytes_total"), job.get("bytes_done") or 0
    if status == "done":
        return f"done, {format_bytes(total or 0)} downloaded" if total else "done, nothing to download"
    if total is None:
        return f"{format_bytes(done)}"
    whole = format_bytes(total)
    number, _, unit = whole.partition(" ")
    scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
    part = f"{done / scale:.0f}" if unit == "B" else f"{done / scale:.1f}"
    line = f"{part}/{number} {unit}"
    if speed := job.get("speed_bps"):
        rate = format_bytes(speed)
        if (value := float(rate.split()[0])) >= 10:
            rate = f"{value:.0f} {rate.split()[1]}"
        line += f", {rate}/s"
    if (eta := job.get("eta_s")) is not None and speed:
        line += f", {format_duration(eta)} left"
    return line
