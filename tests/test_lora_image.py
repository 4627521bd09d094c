"""LoRA adapters on an image model for real: the tiny Stable Diffusion pipeline with two tiny peft adapters ("pixel"
and "ink", made by `python -m demo_models.tiny_lora`) behind one hub, driven by the official openai client. The images
are noise from random weights: the tests compare them byte for byte (same seed, same bytes), which is enough to tell
whether an adapter was applied, which one, and whether it leaked into the next request.

Needs the diffusers engine environment (<envs>/diffusers, with peft) and the tiny model (<models>/tiny-sd).
"""

from __future__ import annotations

import base64
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import DEMO_MODELS, ENVS_DIR, HubProcess, require, start_hub

pytestmark = [pytest.mark.engine, pytest.mark.beside]  # tiny-sd: light, beside the vLLM modules

TINY = DEMO_MODELS / "tiny-sd"
DIFFUSERS_PY = ENVS_DIR / "diffusers" / "bin" / "python"
ARGS = 'device = "cpu"\ncpu_threads = 1\ndefault_steps = 2\ndefault_size = "64x64"\nmax_size = 128\n'
SEED = {"seed": 5}


def registry(adapters: Path) -> str:
    # tiny-sd with two adapters (ink at 0.8 by default) and batching; tiny-plain: the same pipeline, no adapters;
    # tiny-broken: an adapter whose folder does not exist
    return f"""
[hub]
start_timeout = "5m"

[models.tiny-sd]
type = "image"
engine = "diffusers"
source = "{TINY}"
[models.tiny-sd.args]
{ARGS}max_batch = 4
batch_wait = 0.5
[models.tiny-sd.loras]
pixel = "{adapters / 'pixel'}"
ink = {{ source = "{adapters / 'ink'}", weight_name = "pytorch_lora_weights.safetensors", scale = 0.8 }}

[models.tiny-plain]
type = "image"
engine = "diffusers"
source = "{TINY}"
[models.tiny-plain.args]
{ARGS}
[models.tiny-broken]
type = "image"
engine = "diffusers"
source = "{TINY}"
loras = {{ gone = "{adapters / 'gone'}" }}
[models.tiny-broken.args]
{ARGS}"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> HubProcess:
    require(DIFFUSERS_PY.exists(), f"the diffusers engine environment is missing at {ENVS_DIR / 'diffusers'}")
    require((TINY / "model_index.json").exists(), f"the tiny model is missing: python -m demo_models.tiny_sd {TINY}")
    tmp = tmp_path_factory.mktemp("lora-image")
    subprocess.run([str(DIFFUSERS_PY), "-m", "demo_models.tiny_lora", "--base", str(TINY), str(tmp / "loras")],
                   check=True, capture_output=True, timeout=300, cwd=Path(__file__).parent.parent)
    h = start_hub(tmp, registry(tmp / "loras"))
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def client(hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.v1, api_key="unused", timeout=180, max_retries=0)


def image(client: openai.OpenAI, model: str = "tiny-sd", **extra) -> bytes:
    resp = client.images.generate(model=model, prompt="a lighthouse", size="64x64", extra_body={**SEED, **extra})
    return base64.b64decode(resp.data[0].b64_json)


def edit(client: openai.OpenAI, model: str = "tiny-sd", **extra) -> bytes:
    src = image(client, "tiny-plain")
    resp = client.images.edit(model=model, prompt="at night", image=("in.png", src, "image/png"),
                              extra_body={**SEED, "strength": 0.9, "num_inference_steps": 3, **extra})
    return base64.b64decode(resp.data[0].b64_json)


def bad_request(call) -> dict:
    with pytest.raises(openai.BadRequestError) as info:
        call()
    body = info.value.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]


def test_models_lists_the_adapters(hub):
    data = {m["id"]: m for m in httpx.get(hub.v1 + "/models", timeout=10).json()["data"]}
    assert data["tiny-sd"]["loras"] == ["tiny-sd:pixel", "tiny-sd:ink"]
    assert data["tiny-sd:ink"]["parent"] == "tiny-sd" and data["tiny-sd:ink"]["lora"] == {"name": "ink", "scale": 0.8}
    assert "loras" not in data["tiny-plain"]


def test_a_failing_adapter_fails_the_start_naming_it(client, hub):
    with pytest.raises(openai.APIStatusError) as info:
        image(client, "tiny-broken")
    assert info.value.status_code >= 500
    assert hub.models()["tiny-broken"]["state"] in ("failed", "stopped")
    log = hub.cli("logs", "tiny-broken", "-n", "200").stdout
    assert re.search(r"LoRA adapter 'gone' \(\S+gone\) could not be loaded", log), log


def test_switching_adapters_between_requests(client, hub):
    base, pixel, ink, again = image(client), image(client, lora="pixel"), image(client, lora="ink"), image(client)
    assert pixel != base and ink != base and pixel != ink
    assert again == base, "a request without an adapter runs the base: the previous adapter must not leak"
    assert image(client, "tiny-sd:pixel") == pixel, "model tiny-sd:pixel is lora=pixel"
    assert image(client, lora="ink", lora_scale=0.8) == ink, "ink's registry scale (0.8) is its default"
    assert image(client, lora="ink", lora_scale=1.0) not in (ink, base)
    assert image(client, lora="pixel", lora_scale=0) == base, "scale 0 adds nothing"
    assert image(client, "tiny-sd:ink", lora_scale=0) == base
    # the engine loaded the pipeline once and each adapter once, whatever the switches
    log = hub.cli("logs", "tiny-sd", "-n", "2000").stdout
    assert len(re.findall(r"loading \S+ as \w*Pipeline", log)) == 1, log
    for name in ("pixel", "ink"):
        assert len(re.findall(rf"LoRA adapter '{name}' loaded", log)) == 1, log
    assert re.search(r"LoRA: pixel@1 -> ink@0\.8 in [\d.]+ ms", log), log


def test_batches_do_not_mix_adapters(client, hub):
    solo = {k: image(client, **kw) for k, kw in (("base", {}), ("pixel", {"lora": "pixel"}))}
    asks = [{}, {"lora": "pixel"}, {}, {"lora": "pixel"}]
    with ThreadPoolExecutor(len(asks)) as pool:
        got = list(pool.map(lambda kw: image(client, **kw), asks))
    # a base request sharing a call with a pixel one would make pixel's image (same seed, same prompt)
    assert got[0] == got[2] and got[1] == got[3] and got[0] != got[1]
    assert got[1] != solo["base"] and got[0] != solo["pixel"]


def test_edits_with_an_adapter(client):
    base = edit(client)
    pixel = edit(client, lora="pixel")
    assert pixel != base
    assert edit(client, "tiny-sd:pixel") == pixel, "the multipart body's model tiny-sd:pixel picks the adapter"
    assert edit(client) == base


def test_bad_adapter_requests_are_400(client):
    err = bad_request(lambda: image(client, lora="nope"))
    assert err["param"] == "lora" and "pixel" in err["message"] and "ink" in err["message"]
    err = bad_request(lambda: image(client, lora_scale=0.5))
    assert err["param"] == "lora_scale" and "lora" in err["message"]
    err = bad_request(lambda: image(client, lora="pixel", lora_scale="strong"))
    assert err["param"] == "lora_scale"
    err = bad_request(lambda: image(client, "tiny-plain", lora="pixel"))
    assert err["param"] == "lora" and "no LoRA adapters" in err["message"]
    err = bad_request(lambda: edit(client, lora="nope"))
    assert err["param"] == "lora"
    with pytest.raises(openai.NotFoundError) as info:
        image(client, "tiny-sd:nope")
    assert "pixel" in info.value.response.json()["error"]["message"]


def test_image_tab_offers_and_sends_adapters(hub, client):
    """The Image tab's handlers (hub.ui.images) on this hub: base models in the model picker, the adapters in the LoRA
    picker with their registry scale, and a generation with one equal to the API's."""
    import io

    from PIL import Image

    from hub.ui import common, images
    from hub.ui.clients import make_clients

    ui_client, admin = make_clients(hub.url)
    try:
        assert common.model_choices(ui_client)["image"] == ["tiny-sd", "tiny-plain", "tiny-broken"]
        assert "tiny-sd:pixel" in common.model_choices(ui_client, adapters=True)["image"]  # the plot's model axis
        opts = images.image_options(ui_client, "tiny-sd")
        assert opts["loras"] == ["pixel", "ink"] and images.image_options(ui_client, "tiny-plain")["loras"] == []
        picker, scale = images.lora_form(opts)
        assert picker.choices == [(c, c) for c in ("none", "pixel", "ink")] and picker.visible and scale.visible
        assert images.lora_default_scale(ui_client, "tiny-sd", "ink").value == 0.8
        *_, made = list(images.generate_images(ui_client, admin, "tiny-sd", "a lighthouse", size="64x64", seed=5,
                                               steps=2, lora="ink", lora_scale=0.8, poll=0.2))[-1]
        want = Image.open(io.BytesIO(image(client, lora="ink", num_inference_steps=2)))
        assert made.tobytes() == want.convert(made.mode).tobytes()
        *_, plain = list(images.generate_images(ui_client, admin, "tiny-sd", "a lighthouse", size="64x64", seed=5,
                                                steps=2, lora="none", lora_scale=0.8, poll=0.2))[-1]
        assert plain.tobytes() != made.tobytes()
    finally:
        admin.close()


def test_adapters_come_back_after_sleep(client, hub):
    """Sleep drops the pipeline and its adapters; wake loads both again, once."""
    base, pixel = image(client), image(client, lora="pixel")
    engine = f"http://127.0.0.1:{hub.models()['tiny-sd']['process']['port']}"
    entry = httpx.get(engine + "/v1/models", timeout=10).json()["data"][0]
    assert [(a["name"], a["scale"]) for a in entry["loras"]] == [("pixel", 1.0), ("ink", 0.8)]
    loads = httpx.get(engine + "/stats", timeout=10).json()["lora_loads"]
    httpx.post(engine + "/sleep", timeout=60).raise_for_status()
    httpx.post(engine + "/wake", timeout=300).raise_for_status()
    assert httpx.get(engine + "/stats", timeout=10).json()["lora_loads"] == loads + 2
    assert image(client, lora="pixel") == pixel and image(client) == base
