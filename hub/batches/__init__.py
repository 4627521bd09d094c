"""Batch jobs: OpenAI's Files and Batches APIs, kept in SQLite, run in the hub's process as background work.

  store.py    the database (`<state_dir>/hub.db`, WAL, versioned schema) and the files' content (`<state_dir>/files/`)
  shapes.py   the API's objects (pydantic) and the input file's checks
  runner.py   the runner: the pending lines of active batches through the gateway, in-process, as background work
  service.py  the operations the routes call (Batches: upload, create, cancel, list ...), start and stop
  api.py      the routes under /v1/files and /v1/batches

Rules that are not obvious: a batch is checked whole when it is made (a bad line is a 400 naming its line), and then
runs at once (OpenAI's `validating` is never seen); a line's result is recorded in the transaction that marks it
done, so a hub stopped or killed mid-batch carries on where it stopped and records no line twice (runner.py);
completion_window takes any duration (OpenAI takes only "24h").
"""
