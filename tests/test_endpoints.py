"""The route table through a real hub, with the test responder as `command` engines of every kind: each endpoint
reaches a model that serves it (bodies and multipart uploads intact, query strings kept), a model of the wrong kind
gets a 400 naming the right endpoints and models, responses are found again by id, and errors on /v1/messages are
Anthropic's shape (the anthropic SDK reads them)."""

from __future__ import annotations

import hashlib
import io
import wave

import anthropic
import httpx
import openai
import pytest

from hub.endpoints import ENDPOINTS
from tests.conftest import responder_command
from tests.helpers import client


def model(mid: str, kind: str, more: str = "") -> str:
    return (f'[models.{mid}]\ntype = "{kind}"\nengine = "command"\nmemory_gb = 1\n{more}\n'
            f"[models.{mid}.args]\ncommand = {responder_command()}\n")


KIND_OF = {"echo": "text", "pix": "image", "emb": "embedding", "rank": "rerank", "ears": "transcription",
           "voice": "speech"}
MODEL_FOR = {"chat": "echo", "completions": "echo", "responses": "echo", "messages": "echo", "tokenize": "echo",
             "embeddings": "emb", "score": "emb", "rerank": "rank", "transcriptions": "ears",
             "translations": "ears", "speech": "voice", "images": "pix"}
JSON_BODIES = {"chat": {"messages": [{"role": "user", "content": "hi"}]}, "completions": {"prompt": "hi"},
               "responses": {"input": "hi"}, "messages": {"messages": [{"role": "user", "content": "hi"}],
                                                          "max_tokens": 8},
               "tokenize": {"prompt": "hi", "tokens": [1, 2]}, "embeddings": {"input": "hi"},
               "score": {"text_1": "a", "text_2": "b"}, "rerank": {"query": "q", "documents": ["a", "b"]},
               "speech": {"input": "hello", "voice": "alloy"}, "images": {"prompt": "a red square", "size": "8x8"}}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from tests.conftest import start_hub

    registry = "".join(model(m, k) for m, k in KIND_OF.items())
    registry += model("both", "speech", 'tasks = ["transcriptions", "speech"]')
    h = start_hub(tmp_path_factory.mktemp("endpoints"), registry)
    yield h
    h.stop()


def wav_bytes(seconds: float = 0.1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(range(256)) * int(16000 * 2 * seconds / 256))
    return buf.getvalue()


def test_every_json_endpoint_reaches_a_model_that_serves_it(hub) -> None:
    for ep in ENDPOINTS:
        if ep.body != "json" or ep.task in ("images", "speech", "responses"):
            continue
        for path in ep.paths:
            body = {"model": MODEL_FOR[ep.task], **JSON_BODIES[ep.task]}
            r = httpx.post(hub.url + path + "?beta=true", json=body, timeout=60)
            assert r.status_code == 200, (path, r.text[:300])
            got = r.json()
            if ep.task in ("chat", "completions"):  # the responder answers those for real (tests/test_router.py)
                assert got["choices"][0], got
                continue
            assert got["path"] == (ep.upstream or path) and got["model"] == MODEL_FOR[ep.task], (path, got)
            assert got["query"] == "beta=true"


def test_wrong_kind_names_what_the_model_serves_and_who_serves_the_endpoint(hub) -> None:
    # the hub is the module's: another test may have started voice (speech); stop it so that a start would show
    assert httpx.post(hub.url + "/hub/models/voice/unload", timeout=60).json()["state"] == "stopped"
    starts = hub.models()["voice"]["starts"]
    r = httpx.post(hub.v1 + "/embeddings", json={"model": "echo", "input": "hi"}, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "wrong_model_type" and err["param"] == "model"
    assert "use /v1/chat/completions" in err["message"] and "/v1/responses" in err["message"]
    assert "models that serve it: emb" in err["message"]
    r = httpx.post(hub.v1 + "/chat/completions", json={"model": "emb", "messages": []}, timeout=30)
    assert r.status_code == 400 and "use /v1/embeddings or /v1/score or /v1/rerank" in r.json()["error"]["message"]
    assert "models that serve it: echo" in r.json()["error"]["message"]
    files = {"file": ("a.wav", wav_bytes(), "audio/wav")}
    r = httpx.post(hub.v1 + "/audio/transcriptions", data={"model": "voice"}, files=files, timeout=30)
    assert r.status_code == 400 and "models that serve it: ears, both" in r.json()["error"]["message"]
    # nothing started for a refused request
    voice = hub.models()["voice"]
    assert (voice["state"], voice["starts"]) == ("stopped", starts)


def test_models_list_kind_and_endpoints(hub) -> None:
    data = {m["id"]: m for m in httpx.get(hub.v1 + "/models", timeout=10).json()["data"]}
    assert data["emb"]["type"] == "embedding"
    assert data["emb"]["endpoints"] == ["/v1/embeddings", "/v1/score", "/v1/rerank", "/tokenize", "/detokenize"]
    assert data["both"]["endpoints"] == ["/v1/audio/transcriptions", "/v1/audio/speech"]
    assert client(hub).models.retrieve("voice").model_extra["endpoints"] == ["/v1/audio/speech"]


def test_audio_upload_arrives_intact_and_speech_comes_back(hub) -> None:
    audio = wav_bytes(0.5)
    c = client(hub)
    t = c.audio.transcriptions.create(model="ears", file=("talk.wav", audio, "audio/wav"), language="en",
                                      prompt="names: Ada")
    extra = t.model_extra
    assert t.text == f"heard {len(audio)} bytes" and extra["sha256"] == hashlib.sha256(audio).hexdigest()
    assert extra["filename"] == "talk.wav" and extra["fields"]["language"] == "en"
    assert extra["fields"]["prompt"] == "names: Ada" and extra["path"] == "/v1/audio/transcriptions"
    tr = c.audio.translations.create(model="ears", file=("x.wav", audio, "audio/wav"))
    assert tr.text == f"heard {len(audio)} bytes" and tr.model_extra["path"] == "/v1/audio/translations"
    both = c.audio.transcriptions.create(model="both", file=("y.wav", audio, "audio/wav"))
    assert both.model_extra["filename"] == "y.wav"
    speech = c.audio.speech.create(model="voice", voice="alloy", input="hello")
    with wave.open(io.BytesIO(speech.content)) as w:
        assert w.getnframes() == 80 * len("hello")
    # a multipart endpoint called with JSON, or without its file: a clear 400 before any engine is asked
    r = httpx.post(hub.v1 + "/audio/transcriptions", json={"model": "ears"}, timeout=10)
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]
    r = httpx.post(hub.v1 + "/audio/transcriptions", data={"model": "ears"}, files={"x": ("a", b"1")}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"


def test_responses_are_found_again_by_id(hub) -> None:
    c = client(hub)
    made = c.responses.create(model="echo", input="hello")
    assert made.id.startswith("resp_")
    assert c.responses.retrieve(made.id).id == made.id
    events = list(c.responses.create(model="echo", input="streamed", stream=True))
    assert [e.type for e in events] == ["response.created", "response.completed"]
    streamed = events[0].response.id
    assert c.responses.retrieve(streamed).id == streamed
    assert c.responses.cancel(streamed).status == "cancelled"
    c.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError) as err:
        c.responses.retrieve(made.id)
    assert "made through this hub" in err.value.response.json()["error"]["message"]
    r = httpx.get(hub.v1 + f"/responses/{streamed}/input_items", timeout=10)  # the responder has no such route
    assert r.status_code == 404 and r.json()["error"]["message"] == "the engine answered: Not Found"
    r = httpx.get(hub.v1 + "/responses/resp_unknown/input_items", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.put(hub.v1 + f"/responses/{streamed}", timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "GET, DELETE"


def test_anthropic_clients_get_anthropic_errors(hub) -> None:
    a = anthropic.Anthropic(base_url=hub.url, api_key="none", max_retries=0, timeout=30)
    with pytest.raises(anthropic.NotFoundError) as err:
        a.messages.create(model="nope", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "not_found_error"
    assert "model 'nope' does not exist" in err.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as err:
        a.messages.create(model="emb", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert "use /v1/embeddings" in err.value.body["error"]["message"]
    r = httpx.get(hub.v1 + "/messages", timeout=10)
    assert r.status_code == 405 and r.json()["type"] == "error" and r.headers["allow"] == "POST"
    r = httpx.post(hub.v1 + "/messages/batches", json={}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(hub.v1 + "/messages", content=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_api_key_by_bearer_or_x_api_key(hub_factory) -> None:
    h = hub_factory(model("echo", "text") + '[hub]\napi_key_env = "T_KEY"\n', env={"T_KEY": "sekrit"})
    a = anthropic.Anthropic(base_url=h.url, api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(anthropic.AuthenticationError) as err:
        a.messages.count_tokens(model="echo", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["error"]["type"] == "authentication_error"
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(h.v1 + "/messages/count_tokens", json=body, headers={"x-api-key": "sekrit"}, timeout=30)
    assert r.status_code == 200 and r.json()["path"] == "/v1/messages/count_tokens"
    r = httpx.post(h.url + "/rerank", json={"model": "echo", "query": "q", "documents": []}, timeout=30)
    assert r.status_code == 401
    r = httpx.post(h.url + "/tokenize", json={"model": "echo", "prompt": "x"},
                   headers={"authorization": "Bearer sekrit"}, timeout=30)
    assert r.status_code == 200


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_engine_dying_mid_stream_ends_the_stream_with_an_error(hub_factory, endpoint) -> None:
    h = hub_factory(model("dying", "text").replace(responder_command(), responder_command("--die-mid-stream")))
    c = client(h)
    got: list = []
    with pytest.raises(openai.APIError) as err:
        if endpoint == "chat":
            for chunk in c.chat.completions.create(model="dying", messages=[{"role": "user", "content": "a b c d"}],
                                                   stream=True):
                got.append(chunk)
        else:
            for event in c.responses.create(model="dying", input="x", stream=True):
                got.append(event)
    assert got, "the stream should have started before the engine died"
    assert "engine broke off" in str(err.value.message)
