"""The web app's two ways into the hub: the official openai client (/v1) and a small client for the /hub admin API."""

from __future__ import annotations

import httpx
import openai

from hub.client import Admin, AdminError, error_message

__all__ = ["Admin", "AdminError", "error_message", "make_clients"]


def make_clients(hub_url: str, api_key: str | None = None) -> tuple[openai.OpenAI, Admin]:
    """The openai client on the hub's /v1 and the admin client, both sending the hub's API key when it has one."""
    hub_url = hub_url.rstrip("/")
    client = openai.OpenAI(base_url=hub_url + "/v1", api_key=api_key or "no-key", max_retries=0,
                           timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None))
    return client, Admin(hub_url, api_key)
