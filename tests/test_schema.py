"""What the hub answers by itself fits OpenAI's published schema (tests/openai_schema.py): every kind of error it
makes, /v1/models, and the error events it ends a broken stream with. The engines' own answers are validated in
their tiers (tests/test_vllm_real.py, tests/test_diffusers_engine.py), through the hub."""

from __future__ import annotations

import json
import sys

import httpx
import pytest

from tests.conftest import ROOT, HubProcess, start_hub
from tests.helpers import image_model, text_model
from tests.openai_schema import check, sse_events

RAW = json.dumps([sys.executable, str(ROOT / "tests" / "rawengine.py"), "--port", "{port}"])
REGISTRY = ("[hub]\nmax_body_mb = 0.01\n" + text_model("echo") + image_model("pics")
            + text_model("broken", "--fail-start")
            + f'[models.raw]\ntype = "text"\nengine = "command"\nanswer_timeout = "1s"\nstream_idle_timeout = "1s"\n'
              f"[models.raw.args]\ncommand = {RAW}\n")


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> HubProcess:
    h = start_hub(tmp_path_factory.mktemp("schema"), REGISTRY)
    yield h
    h.stop_leaving_nothing()


def chat(model: str, text: str = "hi", **kw) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **kw}


ERRORS = [  # (what, method, path, body or raw bytes, status)
    ("an unknown model", "POST", "/v1/chat/completions", chat("gpt-9"), 404),
    ("a missing field", "POST", "/v1/chat/completions", {"model": "echo"}, 400),
    ("a body that is not JSON", "POST", "/v1/chat/completions", b"{nope", 400),
    ("the wrong kind of model", "POST", "/v1/images/generations", {"model": "echo", "prompt": "x"}, 400),
    ("a wrong method", "GET", "/v1/chat/completions", None, 405),
    ("a path the hub does not serve", "POST", "/v1/nothing", {}, 404),
    ("a body over max_body_mb", "POST", "/v1/chat/completions", chat("echo", "x" * 20000), 413),
    ("an engine that fails to start", "POST", "/v1/chat/completions", chat("broken"), 503),
    ("an engine that never answers", "POST", "/v1/chat/completions", chat("raw", "silent"), 504),
    ("an unknown response id", "GET", "/v1/responses/resp_nope", None, 404),
]


@pytest.mark.parametrize(("what", "method", "path", "body", "status"), ERRORS, ids=[e[0] for e in ERRORS])
def test_every_error_the_hub_makes_is_an_openai_error(hub, what, method, path, body, status):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    r = httpx.request(method, hub.url + path, timeout=120, **kw)
    assert r.status_code == status, r.text
    check("ErrorResponse", r.json())


def test_models_list_and_entry_fit_the_schema(hub):
    listing = httpx.get(hub.v1 + "/models", timeout=10).json()
    check("ListModelsResponse", listing)
    assert {m["id"] for m in listing["data"]} == {"echo", "pics", "broken", "raw"}
    check("Model", httpx.get(hub.v1 + "/models/echo", timeout=10).json())


def test_the_error_chunk_of_a_cut_chat_stream_is_an_openai_error(hub):
    r = httpx.post(hub.v1 + "/chat/completions", json=chat("raw", "cut", stream=True), timeout=60)
    events = sse_events(r.text)
    for _, data in events[:-1]:
        check("CreateChatCompletionStreamResponse", data)
    check("ErrorResponse", events[-1][1])


def test_the_error_event_of_a_broken_responses_stream_fits_the_schema(hub):
    r = httpx.post(hub.v1 + "/responses", json={"model": "raw", "input": "stall", "stream": True}, timeout=60)
    name, data = sse_events(r.text)[-1]
    assert name == "error" and "stream_idle_timeout" in data["message"]
    check("ResponseErrorEvent", data)
    check("ResponseStreamEvent", data)
