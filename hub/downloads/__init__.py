"""Downloads: a model's hub repo source pulled into the cache its engine reads, as jobs with progress, before the
engine starts (issue 25).

  status.py  Job (its JSON, GET /hub/downloads) and describe_download, the one status line ("12.3/57.7 GB, 95 MB/s,
             9m left") of the CLI, the 503 of a request waiting for a downloading model, and the web app
  target.py  what a model's pull fetches (repo, revision, the engine's patterns) and where (the engine's cache);
             whether the cache holds it complete (no network)
  worker.py  one pull, as a subprocess: list, dry run, disk check, snapshot_download, JSON progress lines
  jobs.py    Downloads: the hub's jobs, one per (cache, repo, revision), shared by every caller; cancel kills the
             worker's process group
  api.py     the /hub routes (pull, list, get, cancel)
  pull.py    `hub pull MODEL`: a progress bar over the job, Ctrl-C cancels it

The manager (hub/manager/core.py) pulls a model whose source is not complete before its start (state downloading),
then starts its engine offline (HF_HUB_OFFLINE=1) on that cache. Nothing here imports the manager.
"""

from hub.downloads.jobs import Downloads
from hub.downloads.status import Job, describe_download
from hub.downloads.target import Target, target_of

__all__ = ["Downloads", "Job", "Target", "describe_download", "target_of"]
