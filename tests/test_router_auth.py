"""The API key check (a plain ASGI middleware on the request path of every proxied call)."""

from __future__ import annotations

import httpx

from tests.conftest import responder_command


def test_api_key_missing_wrong_and_right(hub_factory) -> None:
    hub = hub_factory(f'[hub]\napi_key_env = "BENCH_HUB_KEY"\n[models.echo]\ntype = "text"\nengine = "command"\n'
                      f"[models.echo.args]\ncommand = {responder_command()}\n", env={"BENCH_HUB_KEY": "k3y"})
    body = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(hub.v1 + "/chat/completions", json=body, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["message"].startswith("API key missing")
    assert "$BENCH_HUB_KEY" in r.json()["error"]["message"]
    r = httpx.get(hub.url + "/hub/models", headers={"authorization": "Bearer nope"}, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["message"].startswith("API key wrong")
    r = httpx.post(hub.v1 + "/chat/completions", json=body, headers={"authorization": "Bearer k3y"}, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: x"
    assert httpx.get(hub.url + "/health", timeout=10).status_code == 200, "health needs no key"
