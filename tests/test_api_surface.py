"""The API's own surface through a real `hub serve` with the web app mounted at /: model retrieval, and
OpenAI-shaped 404/405 for every path and method under /v1, /hub and /files that the hub does not serve (the web
app must never answer there)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import client, image_model, text_model


@pytest.fixture
def ui_hub(hub_factory):
    return hub_factory(text_model("echo", more='description = "a test echo"') + image_model("pix"), ui=True)


def test_models_retrieve(ui_hub) -> None:
    m = client(ui_hub).models.retrieve("echo")
    assert (m.id, m.object, m.owned_by) == ("echo", "model", "hub")
    raw = httpx.get(ui_hub.v1 + "/models/echo", timeout=10).json()
    assert raw["type"] == "text" and raw["state"] == "stopped" and raw["description"] == "a test echo"
    with pytest.raises(openai.NotFoundError) as err:
        client(ui_hub).models.retrieve("nope")
    body = err.value.response.json()["error"]
    assert body["code"] == "model_not_found" and "available: echo, pix" in body["message"]


def assert_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.request.method, r.request.url.path, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.text[:300]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


UNKNOWN = ["/v1", "/v1/", "/v1/nothing", "/v1/chat", "/v1/chat/completions/extra", "/v1/engines/x/completions",
           "/v1/files/f/content/x", "/v1/batches/b/x", "/v1/fine_tuning/jobs", "/v1/assistants", "/hub", "/hub/",
           "/hub/nothing", "/hub/models/echo/restart", "/files", "/files/pix", "/v2", "/v2/nothing", "/v1/audio",
           "/v1/responses/resp_1/x/y", "/v1/embeddings/x", "/v1/audio/speech/x"]
WRONG_METHODS = [
    ("GET", "/v1/chat/completions", "POST"),
    ("PUT", "/v1/completions", "POST"),
    ("GET", "/v1/images/generations", "POST"),
    ("DELETE", "/v1/images/edits", "POST"),
    ("POST", "/v1/models", "GET"),
    ("DELETE", "/v1/models/echo", "GET"),
    ("POST", "/hub/models", "GET"),
    ("GET", "/hub/models/echo/load", "POST"),
    ("POST", "/files/pix/abc.png", "GET"),
    ("GET", "/v1/responses", "POST"),
    ("PATCH", "/v1/responses/resp_1", "GET"),
    ("GET", "/v1/responses/resp_1/cancel", "POST"),
    ("GET", "/v1/embeddings", "POST"),
    ("GET", "/v1/audio/transcriptions", "POST"),
    ("GET", "/v2/rerank", "POST"),
    ("GET", "/tokenize", "POST"),
    ("PUT", "/v1/files", "POST"),
    ("POST", "/v1/files/f", "DELETE"),
    ("DELETE", "/v1/batches", "GET"),
    ("GET", "/v1/batches/b/cancel", "POST"),
]


def test_unknown_paths_and_wrong_methods_get_openai_errors(ui_hub) -> None:
    for path in UNKNOWN:
        for method in ("GET", "POST", "DELETE"):
            r = httpx.request(method, ui_hub.url + path, timeout=10)
            err = assert_openai_error(r, 404)
            assert err["code"] == "not_found" and path.rstrip("/") in err["message"]
    for method, path, allowed in WRONG_METHODS:
        r = httpx.request(method, ui_hub.url + path, timeout=10)
        err = assert_openai_error(r, 405)
        assert err["code"] == "method_not_allowed" and allowed in r.headers["allow"] and allowed in err["message"]
    # Anthropic's clients get Anthropic's shape
    for method, path, status in [("GET", "/v1/messages", 405), ("POST", "/v1/messages/batches", 404),
                                 ("GET", "/v1/messages/count_tokens", 405)]:
        r = httpx.request(method, ui_hub.url + path, timeout=10)
        assert r.status_code == status and r.json()["type"] == "error", (path, r.text)
        assert r.json()["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    # the web app still serves its own paths
    r = httpx.get(ui_hub.url + "/", timeout=30)
    assert r.status_code == 200 and "<html" in r.text.lower()


async def test_a_bug_in_the_gateway_is_a_shaped_500_not_a_dropped_connection(tmp_path, monkeypatch) -> None:
    """The gateway runs ahead of Starlette's error middleware: an unexpected error is its own to answer, in the
    client's dialect, and logged."""
    from hub.registry import parse_registry
    from hub.router import create_app

    monkeypatch.setenv("HUB_STATE_DIR", str(tmp_path))
    echo = {"type": "text", "engine": "command", "args": {"command": ["x", "{port}"]}}
    reg = parse_registry({"models": {"echo": echo}})
    app = create_app(reg, ui=False)

    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.state.gateway, "check_task", broken)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as c:
        r = await c.post("/v1/chat/completions", json={"model": "echo", "messages": []})
        assert r.status_code == 500 and "internal error" in assert_openai_error(r, 500)["message"]
        r = await c.post("/v1/messages", json={"model": "echo", "max_tokens": 1, "messages": []})
        assert r.status_code == 500 and r.json()["type"] == "error" and r.json()["error"]["type"] == "api_error"
        assert (await c.get("/health")).json() == {"status": "ok"}  # the rest still reaches FastAPI
