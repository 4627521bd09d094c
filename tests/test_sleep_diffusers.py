"""Sleep with the real image server on CPU through a hub: the tiny random Stable Diffusion pipeline (its images are
noise). Evicted, then idle past its ttl, the model sleeps with its process kept (same pid); each next request wakes
it and is answered.

Needs the diffusers engine environment (<envs>/diffusers) and the tiny model (<models>/tiny-sd).
"""

from __future__ import annotations

import base64
import time

import httpx
import pytest

from tests.conftest import DEMO_MODELS, ENVS_DIR, require, start_hub

pytestmark = [pytest.mark.engine, pytest.mark.beside]  # tiny-sd: light, beside the vLLM modules

TINY = DEMO_MODELS / "tiny-sd"
ARGS = 'device = "cpu"\ncpu_threads = 1\ndefault_steps = 2\ndefault_size = "64x64"\n'


def registry() -> str:
    return f"""
[hub]
start_timeout = "5m"
memory_budget_gb = 10

[models.a]
type = "image"
engine = "diffusers"
source = "{TINY}"
memory_gb = 6
sleep = true
ttl = 3
[models.a.args]
{ARGS}
[models.b]
type = "image"
engine = "diffusers"
source = "{TINY}"
memory_gb = 6
sleep = true
[models.b.args]
{ARGS}"""


def generate(url: str, model: str) -> bytes:
    r = httpx.post(url + "/v1/images/generations", timeout=300,
                   json={"model": model, "prompt": "a red fox", "size": "64x64"})
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["data"][0]["b64_json"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return png


def test_image_server_sleeps_when_evicted_or_idle_and_wakes_on_request(tmp_path) -> None:
    require((ENVS_DIR / "diffusers" / "bin" / "python").exists(),
            f"the diffusers engine environment is missing: hub engines setup (HUB_ENVS_DIR={ENVS_DIR})")
    require((TINY / "model_index.json").exists(), f"the tiny model is missing: python -m demo_models.tiny_sd {TINY}")
    hub = start_hub(tmp_path, registry())
    try:
        generate(hub.url, "a")
        a = hub.models()["a"]
        pid, engine = a["process"]["pid"], f"http://127.0.0.1:{a['process']['port']}"
        generate(hub.url, "b")  # a is evicted: asleep, its server process kept
        models = hub.models()
        assert models["a"]["state"] == "sleeping" and models["b"]["state"] == "ready"
        assert models["a"]["process"]["pid"] == pid
        assert httpx.get(engine + "/health").json() == {"status": "sleeping"}
        r = httpx.post(engine + "/v1/images/generations", json={"prompt": "x"}, timeout=10)
        assert r.status_code == 503 and "asleep" in r.json()["error"]["message"]

        generate(hub.url, "a")  # wakes a (b is evicted, so asleep in turn) and is answered
        models = hub.models()
        assert models["a"]["state"] == "ready" and models["a"]["wakes"] == 1 and models["a"]["starts"] == 1
        assert models["a"]["process"]["pid"] == pid and models["b"]["state"] == "sleeping"

        deadline = time.monotonic() + 30  # idle past its ttl (3 s): asleep again, not stopped
        while hub.models()["a"]["state"] != "sleeping" and time.monotonic() < deadline:
            time.sleep(0.5)
        models = hub.models()
        assert models["a"]["state"] == "sleeping" and models["a"]["reason"] == "idle for 3s (ttl)"
        generate(hub.url, "a")
        models = hub.models()
        assert models["a"]["state"] == "ready" and models["a"]["wakes"] == 2 and models["a"]["process"]["pid"] == pid
        metrics = httpx.get(hub.url + "/metrics").text
        assert 'hub_model_wakes_total{model="a"} 2.0' in metrics
    finally:
        hub.stop()
