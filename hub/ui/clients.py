"""The web app's two ways into the hub: the official openai client (/v1) and a small client for the /hub admin API."""

from __future__ import annotations

import importlib

import openai

from hub.client import Admin, AdminError, error_message

__all__ = ["SDK_ERRORS", "Admin", "AdminError", "error_message", "make_clients"]


def _sdk_transport_error() -> type[Exception]:
    """The base error of the HTTP library under the openai SDK (httpx before 3.x, its fork httpx2 since). A stream
    cut mid-answer raises it unwrapped, and it is not httpx's own: name it through the SDK, never by guess."""
    lib = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])
    return lib.HTTPError


# What the openai client can raise: its own errors, and its HTTP library's for a stream cut mid-answer.
SDK_ERRORS: tuple[type[Exception], ...] = (openai.OpenAIError, _sdk_transport_error())


def make_clients(hub_url: str, api_key: str | None = None) -> tuple[openai.OpenAI, Admin]:
    """The openai client on the hub's /v1 and the admin client, both sending the hub's API key when it has one."""
    hub_url = hub_url.rstrip("/")
    # the SDK's own types (an httpx.Timeout is refused by the httpx2 that openai 3.x runs on); the web app calls
    # its own hub, never through the environment's proxy
    client = openai.OpenAI(base_url=hub_url + "/v1", api_key=api_key or "no-key", max_retries=0,
                           timeout=openai.Timeout(connect=10.0, read=None, write=60.0, pool=None),
                           http_client=openai.DefaultHttpxClient(trust_env=False))
    return client, Admin(hub_url, api_key, trust_env=False)
