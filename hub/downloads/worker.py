"""The download worker: one pull, run by the hub as a subprocess in its own process group (so that cancelling a
pull is killing the group), reporting to the hub in JSON lines on stdout.

    python -m hub.downloads.worker --repo ORG/NAME --cache-dir DIR --model-json JSON [--revision REV]

Lines, in order: {"event": "checking"}; {"event": "plan", "commit", "files_total", "bytes_total", "cached_files",
"free_bytes"} (what this pull downloads, files already cached left out); {"event": "progress", "bytes_done",
"files_done", "speed_bps", "eta_s"} at most PROGRESS_EVERY apart; then {"event": "done", "path"} and exit 0, or
{"event": "error", "code", "message"} and exit 2. huggingface_hub's own warnings go to stderr (the hub's log file
of the job).

It lists the repo's files, lets the model's engine pick them (Target.patterns), asks huggingface_hub for a dry run
(sizes, which files are cached), refuses when the bytes to download do not fit the cache's free space (huggingface_hub
itself only warns), then downloads with a tqdm class that reports instead of drawing.
"""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

from tqdm import tqdm

from hub.config import ModelConfig
from hub.downloads.status import format_bytes
from hub.downloads.target import Target

PROGRESS_EVERY = 0.25  # seconds between progress lines (4 a second)
# huggingface_hub reads a file in 10 MiB pieces and moves its bars once per piece: on a slow link (a few MB/s) the
# bar stood still for seconds. Smaller pieces move it smoothly, at no cost worth measuring.
READ_CHUNK = 256 * 1024
SPEED_WINDOW = 5.0  # seconds of samples the speed is measured over
_out_lock = threading.Lock()


def emit(**event: Any) -> None:
    """One JSON line to the hub."""
    with _out_lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def free_bytes(path: str) -> int:
    """The free space of the file system that holds `path` (its nearest existing folder): the one place the disk
    check reads it."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def mount_of(path: str) -> str:
    """The mount point of the file system that holds `path`, for messages."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not p.is_mount() and p != p.parent:
        p = p.parent
    return str(p)


def disk_refusal(needed: int, cache_dir: str) -> str | None:
    """Why `needed` bytes cannot go to `cache_dir` (None: they fit)."""
    free = free_bytes(cache_dir)
    if needed <= free:
        return None
    return (f"needs {format_bytes(needed)}, {format_bytes(free)} free on {mount_of(cache_dir)} (the cache "
            f"{cache_dir}): free some space or point HF_HUB_CACHE at a larger disk")


def explain(err: BaseException, repo: str, revision: str | None, endpoint: str) -> tuple[str, str]:
    """(code, message) of a failed pull: what went wrong, naming the repo, and what to do."""
    from huggingface_hub import errors as hf

    rev = revision or "main"
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, hf.GatedRepoError):
            return "gated", (f"{repo} is gated: accept its terms at {endpoint}/{repo} with your account, then set "
                             "HF_TOKEN to a token of that account")
        if isinstance(e, hf.RevisionNotFoundError):
            return "revision_not_found", (f"{repo} has no revision {rev!r}: set the model's revision in models.toml "
                                          "to a branch, tag or commit of the repo")
        if isinstance(e, hf.RepositoryNotFoundError):
            if status == 401:
                return "repo_not_found", (f"{repo} was not found at {endpoint} or is private (401): check the "
                                          "model's source, or set HF_TOKEN to a token with access to it")
            return "repo_not_found", (f"{repo} does not exist at {endpoint} (or it is private: set HF_TOKEN): check "
                                      "the model's source in models.toml")
        if isinstance(e, hf.RemoteEntryNotFoundError):
            return "entry_not_found", f"a file of {repo}@{rev} is missing at {endpoint}: {e}"
        if isinstance(e, hf.HfHubHTTPError) and status == 401:
            return "unauthorized", (f"{endpoint} refused the token for {repo} (401): HF_TOKEN is missing or invalid; "
                                    "set HF_TOKEN to a valid token")
        if isinstance(e, hf.OfflineModeIsEnabled):
            return "offline", f"cannot pull {repo}: HF_HUB_OFFLINE is set in the hub's environment; unset it to pull"
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return "disk_full", (f"the disk of the cache filled up while pulling {repo}: free some space, then pull "
                                 "again")
        if isinstance(e, hf.HfHubHTTPError) and status:
            return "http_error", f"{endpoint} answered {status} for {repo}: {str(e).splitlines()[0]}"
    for e in chain:
        if type(e).__module__.startswith(("httpx", "httpcore")) or isinstance(e, ConnectionError | TimeoutError):
            return "network", (f"cannot reach {endpoint} for {repo} ({type(e).__name__}): check HF_ENDPOINT and the "
                               "network connection")
    if any(isinstance(e, hf.LocalEntryNotFoundError | hf.DryRunError) for e in chain):
        return "network", (f"cannot reach {endpoint} for {repo}: check HF_ENDPOINT and the network connection")
    return "error", f"pulling {repo} failed: {type(err).__name__}: {err}"


class Reporter:
    """Sums what the progress bars of a snapshot_download see and emits it, throttled."""

    def __init__(self, bytes_total: int, files_total: int, cached_files: int) -> None:
        self.bytes_total, self.files_total, self.cached_files = bytes_total, files_total, cached_files
        self.bytes_done = self.files_seen = 0
        self.samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
        self.last = 0.0
        self.lock = threading.Lock()

    def seen(self, role: str, n: int) -> None:
        """A bar moved: `role` bytes (the bytes written) or files (files finished, cached ones included)."""
        with self.lock:
            if role == "bytes":
                self.bytes_done = n
            elif role == "files":
                self.files_seen = n
            now = time.monotonic()
            if now - self.last >= PROGRESS_EVERY:
                self.last = now
                self.emit(now)

    def emit(self, now: float | None = None) -> None:
        now = now or time.monotonic()
        self.samples.append((now, self.bytes_done))
        while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW:
            self.samples.popleft()
        (t0, b0) = self.samples[0]
        speed = (self.bytes_done - b0) / (now - t0) if now > t0 else None
        left = max(0, self.bytes_total - self.bytes_done)
        eta = left / speed if speed else None
        files_done = min(self.files_total, max(0, self.files_seen - self.cached_files))
        emit(event="progress", bytes_done=self.bytes_done, files_done=files_done,
             speed_bps=round(speed, 1) if speed is not None else None, eta_s=round(eta, 1) if eta is not None else None)


class ReportingTqdm(tqdm):
    """A tqdm that draws nothing and tells the Reporter: huggingface_hub's byte bar ("Reconstructing ...") and its
    file bar ("Fetching N files"); its network-transfer bar is left out (bytes written count)."""

    reporter: ClassVar[Reporter | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        desc = str(kwargs.get("desc") or "")
        self.role = "bytes" if desc.startswith("Reconstructing") else "files" if "Fetching" in desc else ""
        kwargs["file"] = _Null()
        kwargs.pop("name", None)
        super().__init__(*args, **kwargs)

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        if self.role and self.reporter:
            self.reporter.seen(self.role, int(self.n))
        return shown


class _Null:
    def write(self, s: str) -> None:
        pass

    def flush(self) -> None:
        pass


def run(target: Target) -> str:
    """Pull the target; returns the snapshot folder. Raises what huggingface_hub raises, or RuntimeError for a
    refusal (the disk check)."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.hf_api import RepoFile

    emit(event="checking")
    constants.DOWNLOAD_CHUNK_SIZE = READ_CHUNK  # read at each file's download (module attribute)
    api = HfApi()
    files = [f.path for f in api.list_repo_tree(target.repo, revision=target.revision, recursive=True)
             if isinstance(f, RepoFile)]
    allow, ignore = target.patterns(files)
    kw: dict[str, Any] = {"revision": target.revision, "cache_dir": target.cache_dir, "allow_patterns": allow,
                          "ignore_patterns": ignore}
    plan = snapshot_download(target.repo, dry_run=True, tqdm_class=ReportingTqdm, **kw)  # draws nothing
    todo = [f for f in plan if f.will_download]
    needed = sum(f.file_size or 0 for f in todo)
    commit = plan[0].commit_hash if plan else None
    if why := disk_refusal(needed, target.cache_dir):
        raise DiskRefusal(why)
    emit(event="plan", commit=commit, files_total=len(todo), bytes_total=needed, cached_files=len(plan) - len(todo),
         free_bytes=free_bytes(target.cache_dir), endpoint=constants.ENDPOINT)
    ReportingTqdm.reporter = reporter = Reporter(needed, len(todo), len(plan) - len(todo))
    path = snapshot_download(target.repo, tqdm_class=ReportingTqdm, **kw)
    reporter.bytes_done = needed
    reporter.files_seen = len(plan)
    reporter.emit()
    return str(path)


class DiskRefusal(RuntimeError):
    """The pull would not fit the cache's file system."""


def main(argv: list[str] | None = None) -> int:
    """Run one pull and report it; exit 0 when done, 2 when it failed."""
    p = argparse.ArgumentParser(prog="python -m hub.downloads.worker", description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True)
    p.add_argument("--revision")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--model-json", required=True, help="the model's registry table (its engine picks the files)")
    a = p.parse_args(argv)
    target = Target(a.repo, a.revision, a.cache_dir, ModelConfig.model_validate_json(a.model_json))
    try:
        path = run(target)
    except DiskRefusal as err:
        emit(event="error", code="disk_full", message=f"{target.repo}: {err}")
        return 2
    except Exception as err:
        from huggingface_hub import constants

        code, message = explain(err, target.repo, target.revision, constants.ENDPOINT)
        print(f"pull of {target.repo} failed: {err!r}", file=sys.stderr)
        emit(event="error", code=code, message=message)
        return 2
    emit(event="done", path=path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
