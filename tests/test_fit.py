"""Output limits clamped to the model's context, and engine errors in each protocol's words (hub/fit.py,
hub/vocab.py), through a real hub and the test responder with a context of 2048 "tokens" (words), which counts,
refuses and reports output limits as vLLM does. The same against real vLLM: tests/test_vllm_real.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from openai import BadRequestError, OpenAI

from hub.fit import responses_messages, responses_tools
from hub.vocab import engine_error
from tests.conftest import HubProcess, responder_command, start_hub

CONTEXT = 2048
PROMPT = [{"role": "user", "content": "three little words"}]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[HubProcess]:
    registry = (f'[models.roomy]\ntype = "text"\nengine = "command"\n[models.roomy.args]\n'
                f'command = {responder_command("--context", str(CONTEXT))}\n'
                f'[models.strict]\ntype = "text"\nengine = "command"\nfit_max_tokens = false\n[models.strict.args]\n'
                f'command = {responder_command("--context", str(CONTEXT))}\n'
                f'[models.plain]\ntype = "text"\nengine = "command"\n[models.plain.args]\n'
                f'command = {responder_command()}\n')
    h = start_hub(tmp_path_factory.mktemp("fit"), registry)
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def client(hub: HubProcess) -> OpenAI:
    return OpenAI(base_url=hub.v1, api_key="unused", max_retries=0)


def counts(hub: HubProcess, model: str) -> int:
    """How many prompts the model's engine has counted (its /tokenize and count_tokens calls)."""
    r = httpx.post(hub.url + "/v1/chat/completions", json={"model": model, "messages": PROMPT}, timeout=30)
    assert r.status_code == 200
    port = hub.models()[model]["process"]["port"]
    return httpx.get(f"http://127.0.0.1:{port}/test/stats", timeout=10).json().get("tokenize", 0)


def test_a_limit_past_the_context_is_clamped_to_what_the_prompt_leaves(client: OpenAI):
    raw = client.chat.completions.with_raw_response.create(model="roomy", messages=PROMPT, max_tokens=32000)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-engine-max-tokens"] == str(CONTEXT - 3)
    assert raw.headers["x-hub-max-tokens-clamped"].startswith(f"{CONTEXT - 3} (asked 32000;")
    assert raw.parse().choices[0].message.content == "echo: three little words"
    # both of Chat Completions' keys, and a stream
    with client.chat.completions.with_streaming_response.create(
            model="roomy", messages=PROMPT, max_completion_tokens=9000, stream=True) as s:
        assert s.headers["x-engine-max-tokens"] == str(CONTEXT - 3)
        assert "data: [DONE]" in s.read().decode()


def test_a_request_that_fits_costs_no_count(hub: HubProcess, client: OpenAI):
    before = counts(hub, "roomy")
    raw = client.chat.completions.with_raw_response.create(model="roomy", messages=PROMPT, max_tokens=256)
    assert raw.headers["x-engine-max-tokens"] == "256" and "x-hub-max-tokens-clamped" not in raw.headers
    assert counts(hub, "roomy") == before


def test_an_engine_that_does_not_say_its_context_is_asked_once_and_left_alone(hub: HubProcess, client: OpenAI):
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="plain", messages=PROMPT, max_tokens=32000)
        assert raw.http_response.status_code == 200 and "x-hub-max-tokens-clamped" not in raw.headers
    assert counts(hub, "plain") == 1  # one /tokenize when the engine was first seen, none per request


def test_anthropic_messages_asking_for_20000_tokens_get_what_fits(hub: HubProcess):
    c = anthropic.Anthropic(base_url=hub.url, api_key="unused", max_retries=0)
    raw = c.messages.with_raw_response.create(model="roomy", max_tokens=20000, messages=PROMPT,
                                              system="be brief")
    assert raw.http_response.status_code == 200
    assert raw.headers["x-engine-max-tokens"] == str(CONTEXT - 5)  # the system prompt's two words count too


def test_with_fit_max_tokens_off_the_engines_400_comes_back_in_openais_words(client: OpenAI):
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model="strict", messages=PROMPT, max_tokens=32000)
    err = e.value.body
    assert err["type"] == "invalid_request_error" and err["code"] is None
    assert "max_tokens=32000 cannot be greater than max_model_len=2048" in err["message"]


def test_a_prompt_over_the_context_is_context_length_exceeded_in_each_dialect(hub: HubProcess, client: OpenAI):
    """From the engine (fit off: its own error, in the client's words) and from the hub (its count found it)."""
    long = [{"role": "user", "content": "word " * (CONTEXT + 10)}]
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model="strict", messages=long, max_tokens=10)
    assert e.value.code == "context_length_exceeded" and e.value.body["type"] == "invalid_request_error"
    assert "maximum context length is 2048 tokens" in e.value.message  # the engine's message, kept
    c = anthropic.Anthropic(base_url=hub.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as a:
        c.messages.create(model="strict", max_tokens=10, messages=long)
    body = a.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("prompt is too long: This model's maximum context length")
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model="roomy", messages=long, max_tokens=10)
    assert e.value.code == "context_length_exceeded" and e.value.body["param"] == "messages"
    assert e.value.body["message"] == ("prompt is too long: model 'roomy' has a context of 2048 tokens (its "
                                       "max_model_len) and the prompt has 2058 tokens, which leaves no room for an "
                                       "answer; shorten the conversation")


def test_a_prompt_over_the_context_with_a_huge_limit_gets_the_prompts_error_not_the_limits(hub, client):
    """vLLM checks the limit before the prompt: the hub lowers a limit past the whole context so that the client
    learns what to fix (Claude Code compacts on "prompt is too long"; a limit error would only repeat)."""
    long = [{"role": "user", "content": "word " * (CONTEXT + 10)}]
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model="roomy", messages=long, max_tokens=32000)
    assert e.value.code == "context_length_exceeded", e.value.message
    c = anthropic.Anthropic(base_url=hub.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as a:  # its count_tokens refuses the prompt, as vLLM's does
        c.messages.create(model="roomy", max_tokens=20000, messages=long)
    assert a.value.body["error"]["message"].startswith("prompt is too long"), a.value.body


def test_what_depends_on_the_limit_is_clamped_with_it():
    """Anthropic's thinking budget stays below max_tokens (or thinking goes off where the room is under its minimum
    budget of 1024), min_tokens does not pass the limit, and a request that truncates its own prompt is left be."""
    from hub.fit import Fit

    fit = Fit(None)  # type: ignore[arg-type]  # nothing is asked: the context is given, the count replaced
    fit.count = lambda *a: _async(100)  # type: ignore[method-assign]
    body = {"model": "m", "max_tokens": 32000, "messages": PROMPT, "thinking": {"type": "enabled",
                                                                                "budget_tokens": 31999}}
    out = json.loads(_run(fit.fit("/v1/messages", body, b"x" * 3000, "http://e", "e#1", "m", 2048)).body)
    assert out["max_tokens"] == 1948 and out["thinking"] == {"type": "enabled", "budget_tokens": 1947}
    out = json.loads(_run(fit.fit("/v1/messages", body, b"x" * 3000, "http://e", "e#1", "m", 1100)).body)
    assert out["max_tokens"] == 1000 and out["thinking"] == {"type": "disabled"}
    chat = {"model": "m", "messages": PROMPT, "max_tokens": 5000.0, "max_completion_tokens": 9000, "min_tokens": 4000}
    out = json.loads(_run(fit.fit("/v1/chat/completions", chat, b"{}", "http://e", "e#1", "m", 2048)).body)
    assert out["max_tokens"] == out["max_completion_tokens"] == out["min_tokens"] == 1948
    assert out["messages"] == PROMPT and out["model"] == "m"
    assert not fit.may_clamp("/v1/chat/completions", {**chat, "truncate_prompt_tokens": 10}, b"{}", "e#1", 2048)
    assert not fit.may_clamp("/v1/messages/count_tokens", body, b"{}", "e#1", 2048)  # it generates nothing
    assert not fit.may_clamp("/v1/chat/completions", {"max_tokens": True}, b"{}", "e#1", 2048)
    assert fit.may_clamp("/v1/responses", {"max_output_tokens": 4000, "tools": 5}, b"{}", "e#1", 2048)
    fit.count = lambda *a: _async(3000)  # type: ignore[method-assign]
    # a Responses count is an estimate: past the context, the engine decides (no 400 from the hub)
    assert _run(fit.fit("/v1/responses", {"max_output_tokens": 4000, "input": "hi"}, b"{}", "http://e", "e#1", "m",
                        2048)) is None
    from hub.errors import ContextLengthExceeded

    with pytest.raises(ContextLengthExceeded, match="the prompt has 3000 tokens"):
        _run(fit.fit("/v1/chat/completions", chat, b"{}", "http://e", "e#1", "m", 2048))
    from hub.fit import responses_tools

    assert responses_tools({"tools": 5}) is None and responses_tools({"tools": [1, None]}) is None


def _async(value):
    async def f():
        return value
    return f()


def _run(coro):
    import asyncio

    return asyncio.run(coro)


def test_engine_errors_are_rewritten_into_each_protocols_vocabulary():
    vllm = json.dumps({"error": {"message": "This model's maximum context length is 2048 tokens. However, your "
                                            "prompt contains 3000 input tokens", "type": "BadRequestError",
                                 "param": "input_tokens", "code": 400}}).encode()
    assert json.loads(engine_error(vllm, 400, "openai")) == {"error": {
        "message": json.loads(vllm)["error"]["message"], "type": "invalid_request_error", "param": "input_tokens",
        "code": "context_length_exceeded"}}
    assert json.loads(engine_error(vllm, 400, "anthropic"))["error"]["type"] == "invalid_request_error"
    other = json.dumps({"error": {"message": "boom", "type": "InternalServerError", "code": 500}}).encode()
    assert json.loads(engine_error(other, 500, "openai"))["error"] == {
        "message": "boom", "type": "server_error", "param": None, "code": None}
    assert json.loads(engine_error(other, 500, "anthropic")) == {"type": "error",
                                                                 "error": {"type": "api_error", "message": "boom"}}
    busy = json.dumps({"type": "error", "error": {"type": "ServiceUnavailable", "message": "full"}}).encode()
    assert json.loads(engine_error(busy, 503, "anthropic"))["error"]["type"] == "overloaded_error"
    assert json.loads(engine_error(b"slow down", 429, "openai"))["error"] == {
        "message": "the engine answered: slow down", "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    assert json.loads(engine_error(b'{"detail": "Not Found"}', 404, "openai"))["error"]["code"] == "not_found"
    # about the limit, not the prompt: no context_length_exceeded, no "prompt is too long"
    limit = json.dumps({"error": {"message": "max_tokens must be less than the context length", "code": 400}}).encode()
    assert json.loads(engine_error(limit, 400, "openai"))["error"]["code"] is None
    assert not json.loads(engine_error(limit, 400, "anthropic"))["error"]["message"].startswith("prompt is too long")
    older = b'{"error": {"message": "Input length (3000) exceeds model\'s maximum context length (2048)."}}'
    assert json.loads(engine_error(older, 400, "openai"))["error"]["code"] == "context_length_exceeded"
    # an engine that refuses the hub's own key is not the client's key being wrong
    refused = json.loads(engine_error(b'{"error": {"message": "bad key", "code": "invalid_api_key"}}', 401, "openai"))
    assert refused["error"]["code"] == "engine_unauthorized" and "args.api_key_env" in refused["error"]["message"]


def test_responses_input_is_counted_as_chat_messages():
    body = {"instructions": "be brief", "input": [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}, {"type": "web_search"}]}
    messages = responses_messages(body)
    assert messages[:3] == [{"role": "system", "content": "be brief"}, {"role": "system", "content": "rules"},
                            {"role": "user", "content": "hello"}]
    assert messages[3]["role"] == "user" and '"function_call"' in messages[3]["content"]
    assert responses_tools(body) == [{"type": "function", "function": {"name": "f",
                                                                       "parameters": {"type": "object"}}}]
    assert responses_messages({"input": "hi"}) == [{"role": "user", "content": "hi"}]
