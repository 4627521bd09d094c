"""`hub pull MODEL`: pull a model's source through a running hub, with a progress bar in bytes that follows the job
(polled), ending with the snapshot's path. Ctrl-C cancels the job (unless --detach, which leaves at once);
`hub pull --cancel MODEL` cancels the model's running pull. A failure is one line and exit 1."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from hub.client import Admin
from hub.downloads.status import describe_download

POLL_S = 0.5


class PullFailed(Exception):
    """The pull failed or was cancelled: its one-line message."""


def add_pull_command(add: Callable[..., argparse.ArgumentParser], run: Callable[[argparse.Namespace], int]) -> None:
    """Register `hub pull` with the CLI's `add(name, fn, help)` (hub/cli.py)."""
    sp = add("pull", run, "download a model's source into the hub's cache, with progress (Ctrl-C cancels)")
    sp.add_argument("--url", help="the hub's URL (default: $HUB_URL, else the registry's host and port)")
    sp.add_argument("model", help="model id")
    sp.add_argument("--detach", action="store_true", help="start the pull and return; the hub goes on with it")
    sp.add_argument("--cancel", action="store_true", help="cancel the model's running pull")


def pull(admin: Admin, args: argparse.Namespace, say: Callable[[str], None] = print) -> int:
    """Run `hub pull` against a hub; raises PullFailed (one line) when the pull fails or is cancelled."""
    if args.cancel:
        running = [j for j in admin.downloads() if args.model in j["models"] and j["status"] not in
                   ("done", "failed", "cancelled")]
        if not running:
            raise PullFailed(f"model {args.model!r} has no pull under way")
        for j in running:
            admin.cancel_download(j["id"])
            say(f"{args.model}: cancelled the download of {j['repo']} ({j['id']})")
        return 0
    job = admin.pull(args.model)
    if job["status"] == "done":
        say(f"{args.model}: {job['repo']} is in the cache: {job['path']}")
        return 0
    if args.detach:
        say(f"{args.model}: downloading {job['repo']} in the hub ({job['id']}); `hub ps` shows its progress, "
            f"`hub pull --cancel {args.model}` cancels it")
        return 0
    try:
        job = follow(admin, job)
    except KeyboardInterrupt:
        admin.cancel_download(job["id"])
        raise PullFailed(f"interrupted: cancelled the download of {job['repo']} ({job['id']})") from None
    if job["status"] != "done":
        raise PullFailed(f"{args.model}: {describe_download(job)}")
    say(f"{args.model}: {job['repo']} downloaded: {job['path']}")
    return 0


def follow(admin: Admin, job: dict[str, Any]) -> dict[str, Any]:
    """Draw the job's progress until it ends; the ended job."""
    from tqdm import tqdm

    with tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1000, desc=job["repo"], dynamic_ncols=True) as bar:
        while True:
            if job.get("bytes_total") is not None and bar.total != job["bytes_total"]:
                bar.total = job["bytes_total"]
                bar.refresh()
            total = job.get("files_total")
            bar.set_postfix_str(f"{job.get('files_done', 0)}/{total} files" if total else job["status"], refresh=False)
            bar.update(max(0, (job.get("bytes_done") or 0) - bar.n))
            if job["status"] in ("done", "failed", "cancelled"):
                return job
            time.sleep(POLL_S)
            job = admin.download(job["id"])
