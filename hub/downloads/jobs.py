"""The hub's download jobs: one per (cache, repo, revision, patterns), shared by every caller, each run by a worker
subprocess (hub/downloads/worker.py) in the hub's own interpreter and its own process group.

Rules that are not obvious:
- Join, never duplicate: a pull of a key whose job runs gets that job (the key holds the files' patterns too: a model
  of the repo that picks other files gets its own job). A finished job stays listed (the newest KEEP_FINISHED); the
  next pull of its key starts a new job.
- Cancel kills the worker's process group (SIGTERM, then SIGKILL after CANCEL_GRACE). huggingface_hub writes each
  file to a process-unique `<etag>.<random>.incomplete` that no later process resumes, so the partial files of a
  cancelled or failed pull are removed, unless another job of the same repo and cache runs (its own partial files
  look the same; they are removed when that one ends). Finished files stay: the next pull skips them.
- The worker's environment is the hub's with the model env's HF_ variables (HF_ENDPOINT, HF_TOKEN: passed through,
  never logged nor shown, nor on its command line), with HF_HUB_DISABLE_XET=1 where HF_ENDPOINT names a mirror
  (mirrors serve plain HTTP, not Xet). Its stderr goes to `<log_dir>/download-<job>.log`.
- The hub's shutdown cancels the running jobs: no worker outlives it (it also gets SIGTERM if the hub dies:
  hub.procs.die_with_parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

from hub.downloads.status import Job
from hub.downloads.target import Target, complete_path
from hub.errors import Conflict, NotFound
from hub.procs import die_with_parent

log = logging.getLogger("hub.downloads")
CANCEL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a worker
KEEP_FINISHED = 50


def worker_env(target: Target) -> dict[str, str]:
    """The environment of a worker: the hub's with the HF_ variables of the model's env (HF_TOKEN, HF_ENDPOINT: its
    engine downloaded with them before the hub pulled), Xet off behind a mirror, progress bars off."""
    own = {k: v for k, v in target.model.env.items() if k.startswith("HF_")}
    env = {**os.environ, **own, "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    if env.get("HF_ENDPOINT"):
        env["HF_HUB_DISABLE_XET"] = "1"
    return env


def repo_folder(target: Target) -> Path:
    """The repo's folder in huggingface_hub's cache (models--org--name)."""
    return Path(target.cache_dir) / ("models--" + target.repo.replace("/", "--"))


class Downloads:
    """Every download job of the hub."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.jobs: dict[str, Job] = {}  # by id, oldest first
        self._running: dict[tuple[str, str, str, str], Job] = {}
        self._targets: dict[str, Target] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    def get(self, job_id: str) -> Job:
        """A job by id, or NotFound."""
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound(f"no download {job_id!r}: GET /hub/downloads lists them", param="job") from None

    def listing(self) -> list[Job]:
        """Every job, newest first."""
        return list(reversed(self.jobs.values()))

    def of_model(self, model_id: str) -> Job | None:
        """The model's running job, else its newest one (None: it was never pulled)."""
        jobs = [j for j in self.listing() if model_id in j.models]
        return next((j for j in jobs if j.running), jobs[0] if jobs else None)

    def running(self, target: Target) -> Job | None:
        """The job that downloads the target now, if any."""
        job = self._running.get(target.key)
        return job if job and job.running else None

    async def pull(self, target: Target, models: list[str]) -> Job:
        """The target's running job (joined); else a finished job when the cache holds it complete already (no
        network); else a new job."""
        if not self.running(target) and (path := await asyncio.to_thread(complete_path, target)):
            return self.done(target, models, path)
        return self.start(target, models)

    def start(self, target: Target, models: list[str]) -> Job:
        """The running job of the target's key (joined), else a new one."""
        if (job := self._running.get(target.key)) and job.running:
            for m in models:
                if m not in job.models:
                    job.models.append(m)
            return job
        job = self._add(Job(f"dl-{secrets.token_hex(6)}", target.repo, target.revision, target.cache_dir,
                            list(models)))
        self._running[target.key] = job
        self._targets[job.id] = target
        self._tasks[job.id] = task = asyncio.create_task(self._run(job, target), name=f"download-{job.id}")
        task.add_done_callback(lambda _: self._forget(job, target))
        return job

    def _forget(self, job: Job, target: Target) -> None:
        """A job whose run has ended is joined no more."""
        if self._running.get(target.key) is job:
            del self._running[target.key]

    def done(self, target: Target, models: list[str], path: str) -> Job:
        """A job that found the target complete in the cache already (nothing to download)."""
        job = self._add(Job(f"dl-{secrets.token_hex(6)}", target.repo, target.revision, target.cache_dir,
                            list(models), bytes_total=0, files_total=0, path=path))
        job.finish("done")
        return job

    def _add(self, job: Job) -> Job:
        self.jobs[job.id] = job
        finished = [j for j in self.jobs.values() if not j.running]
        for old in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[old.id]
        return job

    async def wait(self, job: Job) -> Job:
        """Wait until the job has finished (cancelling the wait leaves the job running)."""
        await job.finished.wait()
        return job

    async def cancel(self, job_id: str) -> Job:
        """Stop a running job: its worker is killed and its partial files removed; Conflict when it has ended."""
        job = self.get(job_id)
        if not job.running:
            raise Conflict(f"download {job_id} of {job.repo} has ended ({job.status}): nothing to cancel")
        job.finish("cancelled", f"the download of {job.repo} was cancelled", "cancelled")
        await self._kill(job)
        if task := self._tasks.get(job.id):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), CANCEL_GRACE * 2)
        return job

    async def shutdown(self) -> None:
        """Cancel every running job (the hub is stopping)."""
        await asyncio.gather(*(self.cancel(j.id) for j in list(self.jobs.values()) if j.running),
                             return_exceptions=True)

    async def _kill(self, job: Job) -> None:
        proc = self._procs.get(job.id)
        if proc is None or proc.returncode is not None:
            return
        for sig, wait in ((signal.SIGTERM, CANCEL_GRACE), (signal.SIGKILL, None)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                break
            except TimeoutError:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # what it started goes too

    async def _run(self, job: Job, target: Target) -> None:
        """Run the worker, take its lines into the job, and finish the job as the worker ended."""
        argv = [sys.executable, "-m", "hub.downloads.worker", "--repo", target.repo, "--cache-dir", target.cache_dir,
                "--model-json", target.model.model_dump_json(exclude={"env"})]  # its secrets: in worker_env only
        if target.revision:
            argv += ["--revision", target.revision]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"download-{job.id}.log"
        try:
            with log_path.open("w") as err:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=err,
                    env=worker_env(target), start_new_session=True, preexec_fn=die_with_parent, limit=1 << 20)
            self._procs[job.id] = proc
            if not job.running:  # cancelled before its worker was spawned: cancel found nothing to kill
                await self._kill(job)
            log.info("download %s: pulling %s@%s into %s (pid %d)", job.id, job.repo, job.revision or "main",
                     job.cache_dir, proc.pid)
            assert proc.stdout is not None
            async for line in proc.stdout:
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):  # not an event: skipped
                    if job.running:
                        job.apply(json.loads(line))
            code = await proc.wait()
            if code == 0 and job.path:
                job.finish("done")
            elif job.running:
                job.finish("failed", job.error or f"the download worker of {job.repo} exited with code {code}: "
                           f"see {log_path}", job.error_code or "error")
        except asyncio.CancelledError:
            job.finish("cancelled", f"the download of {job.repo} was cancelled", "cancelled")
            await self._kill(job)
            raise
        except Exception as err:  # the worker could not even start (or not be read): the job fails, never hangs
            log.exception("download %s", job.id)
            job.finish("failed", f"the download worker of {job.repo} could not run: {err!r}", "error")
            await self._kill(job)  # nothing reads it any more: it must not go on unwatched
        finally:
            self._procs.pop(job.id, None)
            self._tasks.pop(job.id, None)
            self._forget(job, target)
            if job.status != "done":
                self._remove_partial(target)
            log.info("download %s of %s: %s%s", job.id, job.repo, job.status, f" ({job.error})" if job.error else "")

    def _remove_partial(self, target: Target) -> None:
        """Remove the `.incomplete` files of the repo's cache folder, unless another job of it runs."""
        folder = repo_folder(target)
        if any(k[:2] == target.key[:2] for k in self._running):
            return
        for f in (folder / "blobs").glob("*.incomplete"):
            with contextlib.suppress(OSError):
                f.unlink()
