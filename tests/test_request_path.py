"""The request path under client and engine behaviour, through a real `hub serve` and the official SDKs: a client
that leaves a non-streamed request, a close-delimited stream cut before its last event, an engine that never
answers and one that goes silent mid-stream. The engine is tests/rawengine.py, which answers as HTTP/1.0-style
servers do (every answer delimited by closing the connection)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.conftest import ROOT, HubProcess, start_hub, wait_for

RAW = ROOT / "tests" / "rawengine.py"


def raw_model(name: str, stats: Path, extra: str = "") -> str:
    cmd = json.dumps([sys.executable, str(RAW), "--port", "{port}", "--stats", str(stats)])
    return f'[models.{name}]\ntype = "text"\nengine = "command"\n{extra}[models.{name}.args]\ncommand = {cmd}\n'


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> tuple[HubProcess, Path, Path]:
    tmp = tmp_path_factory.mktemp("request-path")
    calm, strict = tmp / "calm.json", tmp / "strict.json"
    registry = ("[hub]\nanswer_timeout = \"10m\"\n"
                + raw_model("calm", calm, "max_concurrency = 1\n")
                + raw_model("strict", strict, 'answer_timeout = "1s"\nstream_idle_timeout = "1s"\n')
                + raw_model("voice", tmp / "voice.json", 'tasks = ["speech"]\n'))
    hub = start_hub(tmp, registry)
    yield hub, calm, strict
    hub.stop_leaving_nothing()


def stats(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"requests": 0, "dropped": 0, "by_word": {}}


def chat(text: str, stream: bool = False, model: str = "calm") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}


def test_a_client_that_leaves_a_non_streamed_request_frees_the_engine_and_the_place(env):
    hub, calm, _ = env
    httpx.post(hub.v1 + "/chat/completions", json=chat("warm up"), timeout=60).raise_for_status()
    before = stats(calm)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up on a 30 s answer and closes its connection
        httpx.post(hub.v1 + "/chat/completions", json=chat("slow"), timeout=httpx.Timeout(10, read=0.5))
    # the engine sees the hub leave: its work for nobody stops
    wait_for(lambda: stats(calm)["dropped"] == before["dropped"] + 1, "the engine's request dropped")
    wait_for(lambda: hub.models()["calm"]["in_flight"] == 0, "the lease released")
    # the next request (max_concurrency 1) does not wait for the abandoned one's 30 s
    r = httpx.post(hub.v1 + "/chat/completions", json=chat("next"), timeout=20)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "at once"
    assert stats(calm)["by_word"]["slow"] == before["by_word"].get("slow", 0) + 1  # sent once, never again


def test_a_close_delimited_stream_cut_before_its_last_event_ends_with_an_error(env):
    hub, _, _ = env
    client = openai.OpenAI(base_url=hub.v1, api_key="none", max_retries=0)
    for _ in range(5):
        got = []
        with pytest.raises(openai.APIError, match=r"without its last event \(data: \[DONE\]\)"):
            for chunk in client.chat.completions.create(**chat("cut", stream=True)):
                got.append(chunk.choices[0].delta.content)
        assert "".join(got) == "one two three"
    # the whole stream, closed after its [DONE], is no error
    got = [c.choices[0].delta.content for c in client.chat.completions.create(**chat("whole", stream=True))]
    assert "".join(got) == "one two three"


def test_a_cut_stream_on_the_anthropic_path_ends_with_its_error_event(env):
    hub, _, _ = env
    r = httpx.post(hub.v1 + "/messages", json={"model": "calm", "max_tokens": 10, "stream": True,
                                               "messages": [{"role": "user", "content": "cut"}]}, timeout=30)
    assert r.status_code == 200
    last = r.text.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    body = json.loads(last.split("data: ", 1)[1])
    assert body["type"] == "error" and "without its last event (message_stop)" in body["error"]["message"]


def test_an_engine_that_never_answers_gets_a_504_naming_answer_timeout(env):
    hub, _, strict = env
    before = stats(strict)["dropped"]
    client = openai.OpenAI(base_url=hub.v1, api_key="none", max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(**chat("silent", stream=stream, model="strict"))
        assert err.value.status_code == 504
        msg = err.value.body["message"] if "message" in err.value.body else err.value.body["error"]["message"]
        assert "no answer within 1 s (answer_timeout;" in msg and "[models.strict]" in msg
    wait_for(lambda: stats(strict)["dropped"] == before + 2, "the hub closed both requests at the engine")
    a = anthropic.Anthropic(base_url=hub.url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as err:
        a.messages.create(model="strict", max_tokens=10, messages=[{"role": "user", "content": "silent"}])
    assert err.value.status_code == 504 and err.value.body["error"]["type"] == "timeout_error"
    assert "answer_timeout" in err.value.body["error"]["message"]


def test_an_engine_silent_mid_stream_ends_it_with_an_error_naming_stream_idle_timeout(env):
    hub, _, _ = env
    client = openai.OpenAI(base_url=hub.v1, api_key="none", max_retries=0)
    got = []
    with pytest.raises(openai.APIError, match=r"nothing more of its answer for 1 s \(stream_idle_timeout;"):
        for chunk in client.chat.completions.create(**chat("stall", stream=True, model="strict")):
            got.append(chunk.choices[0].delta.content)
    assert got == ["one"]
    wait_for(lambda: hub.models()["strict"]["in_flight"] == 0, "the lease released")


def test_a_streamed_answer_that_is_not_sse_is_cut_not_ended_when_the_engine_dies(env):
    """Audio has no room for an error event: the client's connection is cut, so that its HTTP client reports an
    incomplete body instead of taking 10 bytes for the whole answer."""
    hub, _, _ = env
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream(
            "POST", hub.v1 + "/audio/speech", json={"model": "voice", "input": "audio", "stream": True},
            timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
        r.read()


def test_every_streamed_endpoint_names_the_bytes_of_its_last_event():
    """The gateway tries an endpoint's last-event pattern only on chunks that hold one of its hints."""
    from hub.endpoints import ENDPOINTS

    for ep in ENDPOINTS:
        if ep.end is not None:
            assert ep.end_hints, ep.paths
            for hint in ep.end_hints:  # each hint is part of what the pattern matches
                assert any(hint in m for m in (b"data: [DONE]", b'"type": "' + hint + b'"')) and \
                    ep.end.search(b"\n" + (b"data: [DONE]" if hint == b"[DONE]" else b'"type": "' + hint + b'"'), 1)
