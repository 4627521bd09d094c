"""A client for the hub's /hub admin API (and its batches under /v1/batches), shared by the `hub` CLI and the web
app."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx


class AdminError(Exception):
    """An /hub admin call failed; the message says what to do next."""


def error_message(body: Any, fallback: str) -> str:
    """The message of an OpenAI-shaped error body (or of its inner error object), else `fallback`."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return fallback


class Admin:
    """GET /hub/models[/{id}], POST /hub/models/{id}/load|unload|pull, GET /hub/models/{id}/logs and the download
    jobs (/hub/downloads) of one hub."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0,
                 trust_env: bool = True) -> None:
        """`trust_env`: honour the environment's proxy settings (the CLI, for a hub elsewhere; not the web app,
        which calls its own hub)."""
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, trust_env=trust_env)

    def _call(self, method: str, path: str, timeout: float | None = None, json: Any = None) -> httpx.Response:
        try:
            r = self.http.request(method, path, timeout=timeout or self.http.timeout, json=json)
        except httpx.ConnectError:
            raise AdminError(f"cannot reach the hub at {self.base_url}: is `hub serve` running?") from None
        except httpx.TimeoutException:
            raise AdminError(f"the hub did not answer {method} {path} in time: see `hub ps` and `hub logs`") from None
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = None
            raise AdminError(error_message(body, f"{method} {path}: HTTP {r.status_code} {r.text.strip()[:200]}"))
        return r

    def models(self) -> dict[str, Any]:
        """The admin listing: {"data": [model entries], "budgets": [...], "time": now}."""
        return self._call("GET", "/hub/models").json()

    def model(self, model_id: str) -> dict[str, Any]:
        """One model's entry, with its registry entry under "config" (secrets hidden) and the hub's version."""
        return self._call("GET", f"/hub/models/{quote(model_id, safe='')}").json()

    def entry(self, model_id: str) -> dict[str, Any] | None:
        """The model's entry of /hub/models (its state, a download's progress ...), or None when the hub cannot
        tell (it is never an error to ask)."""
        try:
            entries = self.models()["data"]
        except (AdminError, KeyError, ValueError, TypeError):
            return None
        return next((m for m in entries if isinstance(m, dict) and m.get("id") == model_id), None)

    def state(self, model_id: str) -> str | None:
        """The model's lifecycle state, or None when the hub cannot tell (it is never an error to ask)."""
        entry = self.entry(model_id)
        return entry.get("state") if entry else None

    def load(self, model_id: str, timeout: float = 900.0) -> dict[str, Any]:
        """Start a model and wait until it is ready (or failed)."""
        return self._call("POST", f"/hub/models/{model_id}/load", timeout=timeout).json()

    def unload(self, model_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Stop a model."""
        return self._call("POST", f"/hub/models/{model_id}/unload", timeout=timeout).json()

    def logs(self, model_id: str, tail: int = 60) -> str:
        """The tail of a model's engine log."""
        return self._call("GET", f"/hub/models/{model_id}/logs?tail={tail}").text

    def reload(self, restart: bool = False, timeout: float = 120.0) -> dict[str, Any]:
        """Reread the hub's registry file and apply it: the report ({"changes": [...], "hub", "needs_restart",
        "hosts"}); AdminError with every problem of a broken file."""
        return self._call("POST", "/hub/reload", timeout=timeout, json={"restart": restart}).json()

    def pull(self, model_id: str) -> dict[str, Any]:
        """Start the pull of a model's source, or join the one under way: the job (hub/downloads/status.py; status
        "done" at once when the cache holds the model already)."""
        return self._call("POST", f"/hub/models/{quote(model_id, safe='')}/pull").json()

    def downloads(self) -> list[dict[str, Any]]:
        """Every download job, newest first."""
        return self._call("GET", "/hub/downloads").json()["data"]

    def download(self, job_id: str) -> dict[str, Any]:
        """One download job."""
        return self._call("GET", f"/hub/downloads/{quote(job_id, safe='')}").json()

    def cancel_download(self, job_id: str) -> dict[str, Any]:
        """Cancel a running download (its worker is killed): the job, cancelled."""
        return self._call("DELETE", f"/hub/downloads/{quote(job_id, safe='')}").json()

    def batches(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest batches (OpenAI's Batch objects), newest first."""
        return self._call("GET", f"/v1/batches?limit={limit}").json()["data"]

    def batch(self, batch_id: str) -> dict[str, Any]:
        """One batch."""
        return self._call("GET", f"/v1/batches/{batch_id}").json()

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel a batch: no more of its lines are sent; those under way finish."""
        return self._call("POST", f"/v1/batches/{batch_id}/cancel").json()

    def close(self) -> None:
        """Close the pooled connection."""
        self.http.close()
