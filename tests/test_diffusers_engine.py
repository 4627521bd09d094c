"""The Diffusers engine for real: the tiny random Stable Diffusion pipeline behind one hub, driven by the official
openai client. Its images are noise from random weights: these tests check shapes, sizes and behaviour only.

Needs the diffusers engine environment (<envs>/diffusers) and the tiny model (<models>/tiny-sd, made by
`python -m demo_models.tiny_sd`).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
import struct
import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import DEMO_MODELS, ENVS_DIR, HubProcess, require, start_hub, wait_for
from tests.openai_schema import check, sse_events

pytestmark = [pytest.mark.engine, pytest.mark.beside]  # tiny-sd: light, beside the vLLM modules

TINY = DEMO_MODELS / "tiny-sd"
ARGS = 'device = "cpu"\ncpu_threads = 1\ndefault_steps = 2\ndefault_size = "64x64"\nmax_size = 256\nmax_n = 4\n'
DIFFUSERS_PY = ENVS_DIR / "diffusers" / "bin" / "python"


def registry(preview_vae: Path, flux2: Path) -> str:
    # tiny-sd batches up to 4 images a call; tiny-slow decodes partial images with a (random) AutoencoderTiny;
    # tiny-flux2 (FLUX.2 klein) takes several input images in one edit
    return f"""
[hub]
start_timeout = "5m"

[models.tiny-sd]
type = "image"
engine = "diffusers"
source = "{TINY}"
[models.tiny-sd.args]
{ARGS}max_upload_mb = 0.25
request_timeout = 120
max_batch = 4
quality_steps = {{low = 1, medium = 2, high = 3}}

[models.tiny-slow]
type = "image"
engine = "diffusers"
source = "{TINY}"
[models.tiny-slow.args]
{ARGS}request_timeout = 6
preview_vae = "{preview_vae}"

[models.tiny-flux2]
type = "image"
engine = "diffusers"
source = "{flux2}"
[models.tiny-flux2.args]
{ARGS}max_input_images = 2
"""


def make_tiny_preview_vae(folder: Path) -> Path:
    """A random AutoencoderTiny with tiny-sd's 4 latent channels (its previews are noise, at full size)."""
    code = ("import sys, torch; from diffusers import AutoencoderTiny; torch.manual_seed(0); "
            "AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8), "
            "num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)"
            ".save_pretrained(sys.argv[1])")
    subprocess.run([str(DIFFUSERS_PY), "-c", code, str(folder)], check=True, capture_output=True, timeout=300)
    return folder


# ---- PNG without PIL (the hub's environment has none) ----

def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature, every chunk's CRC and the pixel data's length."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, size, channels = 8, b"", None, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            w, h, depth, colour = struct.unpack(">IIBB", body[:10])
            size, channels = (w, h), {0: 1, 2: 3, 4: 2, 6: 4}[colour]
            assert depth == 8
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
        if kind == b"IEND":
            break
    assert size, "no IHDR"
    assert len(zlib.decompress(idat)) == size[1] * (1 + size[0] * channels), "pixel data of the wrong length"
    return size


def make_png(w: int, h: int, rgba: tuple[int, ...] = (200, 30, 30), alpha_box: tuple[int, int, int, int] | None = None
             ) -> bytes:
    """A solid PNG (RGB, or RGBA whose `alpha_box` (x0, y0, x1, y1) is fully transparent)."""
    rows = []
    for y in range(h):
        row = bytearray([0])
        for x in range(w):
            px = list(rgba[:3])
            if alpha_box:
                x0, y0, x1, y1 = alpha_box
                px.append(0 if x0 <= x < x1 and y0 <= y < y1 else 255)
            row += bytes(px)
        rows.append(bytes(row))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6 if alpha_box else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


def test_png_helpers_agree():
    assert png_size(make_png(24, 16)) == (24, 16)
    assert png_size(make_png(8, 8, alpha_box=(0, 0, 4, 4))) == (8, 8)
    broken = bytearray(make_png(8, 8))
    broken[20] ^= 0xFF
    with pytest.raises(AssertionError):
        png_size(bytes(broken))


# ---- one hub for the module ----

@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> HubProcess:
    require((ENVS_DIR / "diffusers" / "bin" / "python").exists(),
            f"the diffusers engine environment is missing at {ENVS_DIR / 'diffusers'}")
    require((TINY / "model_index.json").exists(), f"the tiny model is missing: python -m demo_models.tiny_sd {TINY}")
    tmp = tmp_path_factory.mktemp("diffusers-hub")
    subprocess.run([str(DIFFUSERS_PY), "-m", "demo_models.tiny_flux2_klein", str(tmp / "flux2")], check=True,
                   capture_output=True, timeout=300, cwd=Path(__file__).parent.parent)
    h = start_hub(tmp, registry(make_tiny_preview_vae(tmp / "preview-vae"), tmp / "flux2"))
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def client(hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.v1, api_key="unused", timeout=180, max_retries=0)


def engine_url(hub: HubProcess, model: str) -> str:
    """The engine's own address (for /memory and client-disconnect checks), started if it is not running."""
    entry = hub.models()[model]
    if entry["state"] != "ready":
        httpx.post(f"{hub.url}/hub/models/{model}/load", timeout=300).raise_for_status()
        entry = hub.models()[model]
    assert entry["state"] == "ready", entry
    return f"http://127.0.0.1:{entry['process']['port']}"


def pngs(resp) -> list[bytes]:
    return [base64.b64decode(d.b64_json) for d in resp.data]


def test_generate_two_images(client, hub):
    raw = client.images.with_raw_response.generate(model="tiny-sd", prompt="a red fox", n=2, size="64x64",
                                                   extra_body={"seed": 7, "num_inference_steps": 2})
    images = pngs(raw.parse())
    assert len(images) == 2
    assert [png_size(p) for p in images] == [(64, 64), (64, 64)]
    assert float(raw.headers["x-peak-memory-mb"]) > 50
    again = client.images.generate(model="tiny-sd", prompt="a red fox", n=2, size="64x64",
                                   extra_body={"seed": 7, "num_inference_steps": 2})
    assert pngs(again) == images, "the same seed makes the same images"
    assert images[0] != images[1]
    mem = httpx.get(engine_url(hub, "tiny-sd") + "/memory").json()
    assert mem["device"] == "cpu" and mem["kind"] == "rss"
    assert mem["requests"] >= 2 and mem["max_peak_mb"] >= mem["last_peak_mb"] > 50


def test_generate_non_square_and_default_size(client):
    assert png_size(pngs(client.images.generate(model="tiny-sd", prompt="x", size="96x64"))[0]) == (96, 64)
    assert png_size(pngs(client.images.generate(model="tiny-sd", prompt="x"))[0]) == (64, 64)


def test_edit_image_to_image(client):
    resp = client.images.edit(model="tiny-sd", prompt="make it blue", image=("in.png", make_png(64, 64), "image/png"),
                              size="64x64", extra_body={"strength": 0.75, "seed": 1})
    assert [png_size(p) for p in pngs(resp)] == [(64, 64)]
    # no size: the input's size; a list is sent as image[] by the SDK
    resp = client.images.edit(model="tiny-sd", prompt="x", image=[("in.png", make_png(48, 32), "image/png")], n=2)
    assert [png_size(p) for p in pngs(resp)] == [(48, 32), (48, 32)]


def test_edit_with_mask_inpaints(client):
    mask = make_png(64, 64, alpha_box=(16, 16, 48, 48))
    resp = client.images.edit(model="tiny-sd", prompt="a window", image=("in.png", make_png(64, 64), "image/png"),
                              mask=("mask.png", mask, "image/png"), size="64x64")
    assert [png_size(p) for p in pngs(resp)] == [(64, 64)]


def test_url_response_through_the_hub(client, hub):
    resp = client.images.generate(model="tiny-sd", prompt="x", size="64x64", response_format="url")
    url = resp.data[0].url
    assert url.startswith(hub.url + "/files/tiny-sd/") and url.endswith(".png")
    r = httpx.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and png_size(r.content) == (64, 64)
    gone = httpx.get(hub.url + "/files/tiny-sd/nothing-here.png")
    assert gone.status_code == 404


BAD_GENERATIONS = [
    ({"size": "65x64"}, "size"), ({"size": "big"}, "size"), ({"size": "512x512"}, "size"), ({"n": 5}, "n"),
    ({"prompt": "   "}, "prompt"), ({"extra_body": {"num_inference_steps": 0}}, "num_inference_steps"),
    ({"extra_body": {"colour": "red"}}, "colour"),
]


@pytest.mark.parametrize(("kwargs", "param"), BAD_GENERATIONS)
def test_bad_generation_is_400_naming_the_param(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(**{"model": "tiny-sd", "prompt": "x", **kwargs})
    assert e.value.status_code == 400
    assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(("case", "param"), [("not-image", "image"), ("mask-size", "mask"), ("oversized", "image"),
                                             ("empty-prompt", "prompt"), ("n", "n")])
def test_bad_edit_is_400_naming_the_param(client, case, param):
    image = ("in.png", make_png(64, 64), "image/png")
    kwargs: dict = {"model": "tiny-sd", "prompt": "x", "image": image}
    if case == "not-image":
        kwargs["image"] = ("in.png", b"this is text, not a picture", "image/png")
    elif case == "mask-size":
        kwargs["mask"] = ("mask.png", make_png(32, 32, alpha_box=(0, 0, 8, 8)), "image/png")
    elif case == "oversized":
        kwargs["image"] = ("big.png", make_png(64, 64) + bytes(300_000), "image/png")  # over max_upload_mb 0.25
    elif case == "empty-prompt":
        kwargs["prompt"] = ""
    else:
        kwargs["n"] = 9
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(**kwargs)
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body


def test_still_serves_after_bad_input_and_eight_concurrent_requests(client, hub):
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="tiny-sd", prompt="x", size="1x1")
    before = httpx.get(engine_url(hub, "tiny-sd") + "/memory").json()["requests"]

    def one(i: int) -> tuple[int, int]:
        return png_size(pngs(client.images.generate(model="tiny-sd", prompt=f"image {i}", size="64x64",
                                                    extra_body={"seed": i}))[0])

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(one, range(8)))
    assert sizes == [(64, 64)] * 8
    after = httpx.get(engine_url(hub, "tiny-sd") + "/memory").json()["requests"]
    assert after - before == 8, "each request is counted once, batched or not"


# Many short steps: about a minute of work on one CPU thread, and each step is a point where a job can stop.
SLOW = {"size": "64x64", "extra_body": {"num_inference_steps": 500}}


def test_request_timeout_cancels_the_job(client):
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        client.images.generate(model="tiny-slow", prompt="x", **SLOW)
    assert e.value.status_code == 504 and "request_timeout" in e.value.message
    assert time.monotonic() - t0 < 60
    # the timed-out job was stopped: a small request fits in the same 6 s timeout
    assert png_size(pngs(client.images.generate(model="tiny-slow", prompt="x", size="64x64"))[0]) == (64, 64)


def test_client_that_disconnects_does_not_wedge_the_queue(client, hub):
    client.images.generate(model="tiny-slow", prompt="warm up", size="64x64")
    base = engine_url(hub, "tiny-slow")
    body = {"model": "tiny-slow", "prompt": "x", "size": SLOW["size"], **SLOW["extra_body"]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/v1/images/generations", json=body, timeout=1.0)  # the client gives up and goes away
    t0 = time.monotonic()
    r = httpx.post(base + "/v1/images/generations", json={"model": "tiny-slow", "prompt": "y", "size": "64x64"},
                   timeout=30)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert png_size(base64.b64decode(r.json()["data"][0]["b64_json"])) == (64, 64)
    assert elapsed < 4.5, f"the abandoned job held the queue for {elapsed:.1f}s"


def test_a_client_that_leaves_a_non_streamed_request_through_the_hub_stops_the_generation(client, hub):
    """The hub drops the engine's request when its client leaves: the image server stops the pipeline part-way,
    and the hub releases the model for the next request."""
    client.images.generate(model="tiny-slow", prompt="warm up", size="64x64")
    base = engine_url(hub, "tiny-slow")
    before = httpx.get(base + "/stats", timeout=10).json()
    body = {"model": "tiny-slow", "prompt": "x", "size": SLOW["size"], **SLOW["extra_body"]}
    with pytest.raises(httpx.ReadTimeout):  # a 500-step generation, abandoned after 1 s
        httpx.post(hub.v1 + "/images/generations", json=body, timeout=httpx.Timeout(30, read=1.0))
    wait_for(lambda: httpx.get(base + "/stats", timeout=10).json()["stopped_calls"] > before["stopped_calls"],
             "the image server stopped the abandoned generation", 60)
    wait_for(lambda: hub.models()["tiny-slow"]["in_flight"] == 0, "the hub released the model", 30)
    r = client.images.generate(model="tiny-slow", prompt="y", size="64x64")
    assert png_size(pngs(r)[0]) == (64, 64)
    after = httpx.get(base + "/stats", timeout=10).json()
    # two pipeline calls (the stopped one and the next), one request served: nothing was sent twice
    assert (after["pipeline_calls"] - before["pipeline_calls"], after["requests"] - before["requests"]) == (2, 1)


def test_health_models_and_errors_of_the_engine(hub):
    base = engine_url(hub, "tiny-sd")
    assert httpx.get(base + "/health").status_code == 200
    assert [m["id"] for m in httpx.get(base + "/v1/models").json()["data"]] == ["tiny-sd"]
    r = httpx.post(base + "/v1/images/generations", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(base + "/v1/images/edits", json={"prompt": "x"})
    assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]
    own = httpx.post(base + "/v1/images/generations", json={"prompt": "x", "response_format": "url"}).json()
    assert own["data"][0]["url"].startswith(base + "/files/")  # without the hub's header: the engine's own address
    assert httpx.get(own["data"][0]["url"]).status_code == 200


def test_sizes_follow_the_loaded_pipelines_own_rule(client):
    """Packed-latent pipelines (FLUX.2 here) need sizes in multiples of twice their VAE's scale factor (8 x 2 = 16),
    the UNet pipelines multiples of 8: each refused before the pipeline runs, with the rule's reason."""
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny-flux2", prompt="x", size="72x64")
    assert err.value.body["param"] == "size"
    assert ("'size' 72x64: width and height must be multiples of 16 for this model (Flux2KleinPipeline: its VAE "
            "scales by 8 and it packs latents 2x2), e.g. 64x64") in err.value.body["message"]
    assert png_size(pngs(client.images.generate(model="tiny-flux2", prompt="x", size="80x64"))[0]) == (80, 64)
    with pytest.raises(openai.BadRequestError, match=r"multiples of 8 for this model \(StableDiffusionPipeline: its "
                       r"VAE scales by 2, and the pipeline checks 8\), e\.g\. 64x56"):
        client.images.generate(model="tiny-sd", prompt="x", size="66x62")
    assert png_size(pngs(client.images.generate(model="tiny-sd", prompt="x", size="72x56"))[0]) == (72, 56)


def test_call_arguments_follow_the_loaded_pipelines_signature(client):
    """Parameters outside the Images API go to the pipeline when its __call__ takes them; one it does not take is a
    400 naming it and listing what it takes (before, the pipeline's own knobs were unknown parameters and the
    server's extensions a pipeline lacks were dropped without a word)."""
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny-sd", prompt="x", size="64x64", extra_body={"true_cfg_scale": 4})
    assert err.value.body["param"] == "true_cfg_scale" and err.value.body["type"] == "invalid_request_error"
    assert err.value.body["message"].startswith(
        "unsupported parameter 'true_cfg_scale' for StableDiffusionPipeline; accepted: clip_skip, eta, "
        "guidance_rescale, guidance_scale, negative_prompt, num_inference_steps; and the server's own: ")
    with pytest.raises(openai.BadRequestError) as err:  # FLUX.2 klein has no negative prompt
        client.images.generate(model="tiny-flux2", prompt="x", size="64x64", extra_body={"negative_prompt": "blur"})
    assert err.value.body["param"] == "negative_prompt"
    assert "unsupported parameter 'negative_prompt' for Flux2KleinPipeline; accepted: " in err.value.body["message"]
    image = ("in.png", make_png(64, 64), "image/png")
    with pytest.raises(openai.BadRequestError) as err:  # an instruction edit has no strength
        client.images.edit(model="tiny-flux2", prompt="x", image=image, size="64x64", extra_body={"strength": 0.5})
    assert err.value.body["param"] == "strength" and "Flux2KleinPipeline" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # multipart: a string where the pipeline wants a number
        client.images.edit(model="tiny-sd", prompt="x", image=image, extra_body={"eta": "lots"})
    assert err.value.body["param"] == "eta"
    assert ("'eta' must be a number between -1000000 and 1000000 for StableDiffusionImg2ImgPipeline, not 'lots'"
            in err.value.body["message"])
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="tiny-sd", prompt="x", extra_body={"width": 64})
    assert err.value.body["param"] == "width" and "the server sets it from 'size'" in err.value.body["message"]
    # taken: they reach the pipeline (guidance_rescale changes what classifier-free guidance makes)
    kwargs = {"model": "tiny-sd", "prompt": "a red fox", "size": "64x64"}
    plain = pngs(client.images.generate(**kwargs, extra_body={"seed": 3, "num_inference_steps": 2}))[0]
    rescaled = pngs(client.images.generate(**kwargs, extra_body={"seed": 3, "num_inference_steps": 2,
                                                                 "guidance_rescale": 0.7, "eta": 0.0}))[0]
    assert png_size(rescaled) == (64, 64) and rescaled != plain
    edited = client.images.edit(model="tiny-sd", prompt="x", image=image, extra_body={"eta": "0.5"})
    assert [png_size(p) for p in pngs(edited)] == [(64, 64)]


def test_every_answer_shape_fits_openais_schema(hub):
    """Generations and edits, whole and streamed, as the image server answers them through the hub."""
    gen = {"model": "tiny-sd", "prompt": "a red fox", "size": "96x64", "num_inference_steps": 3, "n": 2}
    r = httpx.post(hub.v1 + "/images/generations", json=gen, timeout=120)
    assert r.status_code == 200 and r.headers["x-image-size"] == "96x64"
    check("ImagesResponse", r.json())
    assert r.json()["usage"]["input_tokens"] > 0  # the prompt's tokens, counted by the pipeline's tokenizer
    r = httpx.post(hub.v1 + "/images/generations", json={**gen, "response_format": "url"}, timeout=120)
    check("ImagesResponse", r.json())
    events = sse_events(raw_stream(hub.v1, {**gen, "partial_images": 1}))
    names = [name for name, _ in events]
    assert names.count("image_generation.completed") == 2 and "image_generation.partial_image" in names
    for _, data in events:
        check("ImageGenStreamEvent", data)
    files = {"image": ("in.png", make_png(64, 64), "image/png")}
    form = {"model": "tiny-sd", "prompt": "make it blue", "num_inference_steps": "3", "strength": "1.0"}
    r = httpx.post(hub.v1 + "/images/edits", data=form, files=files, timeout=120)
    assert r.status_code == 200
    check("ImagesResponse", r.json())
    r = httpx.post(hub.v1 + "/images/edits", data={**form, "stream": "true", "partial_images": "1"}, files=files,
                   timeout=120)
    events = sse_events(r.text)
    assert [name for name, _ in events] == ["image_edit.partial_image", "image_edit.completed"]
    for _, data in events:
        check("ImageEditStreamEvent", data)


# ---- streaming: OpenAI's events, progress comments, errors, cancellation ----

PROGRESS = re.compile(r'^: progress \{"step": (\d+), "steps": (\d+), "elapsed": ([\d.]+)\}\n\n', re.M)


def raw_stream(url: str, body: dict, timeout: float = 120) -> str:
    """The text of a streamed generation (SSE), read to its end."""
    with httpx.stream("POST", url + "/images/generations", json={**body, "stream": True}, timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.read()
        return r.read().decode()


def test_stream_generate_sends_partial_and_completed_events(client):
    kwargs = {"model": "tiny-sd", "prompt": "a red fox", "size": "96x64",
              "extra_body": {"num_inference_steps": 6, "seed": 5}}
    events = list(client.images.generate(stream=True, partial_images=2, **kwargs))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for e in events:
        assert png_size(base64.b64decode(e.b64_json)) == (96, 64)
        # 96x64 is outside the size enum of OpenAI's schema, which requires the field in events: "auto"
        assert (e.size, e.output_format, e.background, e.quality) == ("auto", "png", "opaque", "auto")
        assert abs(e.created_at - time.time()) < 120
    assert events[0].b64_json != events[1].b64_json != events[2].b64_json
    plain = client.images.generate(**kwargs)
    assert pngs(plain)[0] == base64.b64decode(events[-1].b64_json), "streaming makes the same image"
    # no partial images asked for: the completed event alone
    assert [e.type for e in client.images.generate(stream=True, **kwargs)] == ["image_generation.completed"]


def test_stream_edit_sends_image_edit_events(client):
    events = list(client.images.edit(model="tiny-sd", prompt="make it blue", image=("in.png", make_png(64, 64),
                                      "image/png"), size="64x64", stream=True, partial_images=1,
                                      extra_body={"num_inference_steps": 4, "strength": 1.0}))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert all(png_size(base64.b64decode(e.b64_json)) == (64, 64) for e in events)
    mask = make_png(64, 64, alpha_box=(16, 16, 48, 48))
    events = list(client.images.edit(model="tiny-sd", prompt="a window", image=("in.png", make_png(64, 64),
                                      "image/png"), mask=("m.png", mask, "image/png"), stream=True, partial_images=1,
                                      output_format="jpeg", extra_body={"num_inference_steps": 4}))
    assert [e.type for e in events][-1] == "image_edit.completed" and events[-1].output_format == "jpeg"
    assert image_format(base64.b64decode(events[-1].b64_json)) == "jpeg"


def test_stream_of_several_images_sends_one_completed_event_each(client):
    events = list(client.images.generate(model="tiny-sd", prompt="x", n=2, size="64x64", stream=True,
                                         partial_images=1, extra_body={"num_inference_steps": 4, "seed": 1}))
    partial = [e for e in events if e.type == "image_generation.partial_image"]
    done = [e for e in events if e.type == "image_generation.completed"]
    assert sorted(e.index for e in partial) == [0, 1] and [e.index for e in done] == [0, 1]
    assert done[0].b64_json != done[1].b64_json


def test_stream_progress_comments_every_step(hub):
    text = raw_stream(hub.v1, {"model": "tiny-sd", "prompt": "x", "size": "64x64", "num_inference_steps": 5,
                               "partial_images": 1})
    steps = [(int(a), int(b), float(c)) for a, b, c in PROGRESS.findall(text)]
    assert [s[:2] for s in steps] == [(k, 5) for k in range(1, 6)]
    assert all(a[2] <= b[2] for a, b in itertools.pairwise(steps)), "elapsed grows"
    assert text.index("event: image_generation.partial_image") < text.index("event: image_generation.completed")
    data = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [d["type"] for d in data] == ["image_generation.partial_image", "image_generation.completed"]


def test_quality_sets_the_steps_and_explicit_steps_win(client, hub):
    def steps(**body) -> int:
        text = raw_stream(hub.v1, {"model": "tiny-sd", "prompt": "x", "size": "64x64", **body})
        return int(PROGRESS.findall(text)[-1][1])

    assert [steps(quality=q) for q in ("low", "medium", "high", "auto")] == [1, 2, 3, 2]  # auto: default_steps
    assert steps(quality="low", num_inference_steps=4) == 4
    raw = client.images.with_raw_response.generate(model="tiny-sd", prompt="x", quality="low")
    resp = raw.parse()
    # 64x64 is outside the size enum of OpenAI's schema: left out of the answer, told in a header of our own
    assert resp.quality == "low" and resp.size is None and resp.background == "opaque"
    assert raw.headers["x-image-size"] == "64x64"
    assert client.images.generate(model="tiny-sd", prompt="x").quality is None, "auto is not a level to report"


def test_stream_error_after_start_is_an_error_event(client):
    t0 = time.monotonic()
    with pytest.raises(openai.APIError) as e:
        list(client.images.generate(model="tiny-slow", prompt="x", stream=True, partial_images=1, **SLOW))
    assert "request_timeout" in e.value.message and time.monotonic() - t0 < 60


def test_preview_vae_decodes_partial_images(client, hub):
    assert httpx.get(engine_url(hub, "tiny-sd") + "/v1/models").json()["data"][0]["previews"] == "linear"
    events = list(client.images.generate(model="tiny-slow", prompt="x", size="64x64", stream=True, partial_images=1,
                                         extra_body={"num_inference_steps": 4}))
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    assert png_size(base64.b64decode(events[0].b64_json)) == (64, 64)
    assert httpx.get(engine_url(hub, "tiny-slow") + "/v1/models").json()["data"][0]["previews"] == "vae"


def test_stream_client_that_leaves_cancels_the_job(client, hub):
    client.images.generate(model="tiny-slow", prompt="warm up", size="64x64")
    body = {"model": "tiny-slow", "prompt": "x", "size": "64x64", "stream": True, **SLOW["extra_body"]}
    with httpx.stream("POST", hub.v1 + "/images/generations", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith(": progress"):
                break  # the client leaves after the first step
    t0 = time.monotonic()
    assert png_size(pngs(client.images.generate(model="tiny-slow", prompt="y", size="64x64"))[0]) == (64, 64)
    assert time.monotonic() - t0 < 4.5, "the abandoned streaming job held the queue"


# ---- formats, background ----

def image_format(data: bytes) -> str:
    """The format of image bytes, from their magic numbers."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "unknown"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_output_format_bytes_match(client, hub, fmt):
    resp = client.images.generate(model="tiny-sd", prompt="x", size="64x64", output_format=fmt)
    data = pngs(resp)[0]
    assert resp.output_format == fmt and image_format(data) == fmt
    url = client.images.generate(model="tiny-sd", prompt="x", output_format=fmt, response_format="url").data[0].url
    r = httpx.get(url)
    assert url.endswith(f".{fmt}") and r.headers["content-type"] == f"image/{fmt}" and image_format(r.content) == fmt


def test_output_compression_sets_jpeg_and_webp_quality(client):
    def size(fmt: str, c: int) -> int:
        return len(pngs(client.images.generate(model="tiny-sd", prompt="x", size="128x128", output_format=fmt,
                                               output_compression=c, extra_body={"seed": 3}))[0])

    assert size("jpeg", 10) < size("jpeg", 95)
    assert size("webp", 10) < size("webp", 95)


def test_background(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="tiny-sd", prompt="x", background="transparent")
    assert e.value.body["param"] == "background" and "opaque" in e.value.body["message"]
    for bg in ("opaque", "auto"):
        assert client.images.generate(model="tiny-sd", prompt="x", background=bg).background == "opaque"


# ---- limits ----

def bomb_png(side: int = 10000) -> bytes:
    """A valid 1-bit grayscale PNG of side x side pixels: about 12 KB, 100 megapixels once decoded."""
    row = b"\x00" + bytes((side + 7) // 8)
    raw = zlib.compress(row * side, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_png_bomb_is_refused_before_decoding(client, hub):
    bomb = bomb_png()
    assert len(bomb) < 250_000
    rss = psutil.Process(hub.models()["tiny-sd"]["process"]["pid"]).memory_info().rss
    t0 = time.monotonic()
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(model="tiny-sd", prompt="x", image=("bomb.png", bomb, "image/png"))
    assert e.value.body["param"] == "image"
    assert "10000x10000" in e.value.body["message"] and "max_input_pixels" in e.value.body["message"]
    assert time.monotonic() - t0 < 5
    grown = psutil.Process(hub.models()["tiny-sd"]["process"]["pid"]).memory_info().rss - rss
    assert grown < 50 * 2**20, f"the engine grew by {grown / 2**20:.0f} MiB: the bomb was decoded"


def test_decode_checks_pixels_before_decoding():
    require(DIFFUSERS_PY.exists(), "the diffusers engine environment is missing")
    code = ("import sys; from PIL import ImageFile; from imageserver.api import BadRequest; "
            "from imageserver.images import decode_image\n"
            "def no(self): raise AssertionError('decoded')\n"
            "ImageFile.ImageFile.load = no\n"
            "try: decode_image(sys.stdin.buffer.read(), 'image', 50_000_000)\n"
            "except BadRequest as e: print(e.param, e.message)\n")
    r = subprocess.run([str(DIFFUSERS_PY), "-c", code], input=bomb_png(), capture_output=True, timeout=120,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0 and r.stdout.startswith(b"image ") and b"max_input_pixels" in r.stdout, r.stderr[-2000:]


def test_prompt_limits_are_400s_naming_the_limit(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="tiny-sd", prompt="x" * 32001)
    assert e.value.body["param"] == "prompt" and "max_prompt_chars" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="tiny-sd", prompt="a lighthouse on a cliff " * 5)  # 125 byte tokens + 2
    assert e.value.body["param"] == "prompt" and "at most 77" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="tiny-sd", prompt="x", extra_body={"negative_prompt": "blur " * 20})
    assert e.value.body["param"] == "negative_prompt"
    assert len(pngs(client.images.generate(model="tiny-sd", prompt="a lighthouse on a cliff " * 2))) == 1


def test_invalid_unicode_is_400(hub):
    raw = b'{"model": "tiny-sd", "prompt": "a \\ud800 cat"}'  # a lone surrogate: valid JSON, not encodable text
    headers = {"content-type": "application/json"}
    r = httpx.post(engine_url(hub, "tiny-sd") + "/v1/images/generations", content=raw, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "prompt" and "Unicode" in r.json()["error"]["message"]
    r = httpx.post(hub.v1 + "/images/generations", content=raw, headers=headers)  # the hub refuses it first
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"], r.text


def test_several_images_to_a_single_image_model_is_400(client):
    image = ("in.png", make_png(64, 64), "image/png")
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(model="tiny-sd", prompt="x", image=[image, image])
    assert e.value.body["param"] == "image" and "one image at a time" in e.value.body["message"]


def test_multi_image_edit_on_a_pipeline_that_takes_several(client, hub):
    a, b = ("a.png", make_png(64, 64), "image/png"), ("b.png", make_png(96, 64, (0, 0, 200)), "image/png")
    kwargs = {"model": "tiny-flux2", "prompt": "put them together", "size": "64x64",
              "extra_body": {"seed": 1, "num_inference_steps": 2}}
    two = pngs(client.images.edit(image=[a, b], n=2, **kwargs))
    assert [png_size(p) for p in two] == [(64, 64), (64, 64)] and two[0] != two[1]
    one = pngs(client.images.edit(image=[a], **kwargs))
    assert one[0] != two[0], "the second image took part"
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(image=[a, b, a], **kwargs)
    assert e.value.body["param"] == "image" and "at most 2 input images (max_input_images)" in e.value.body["message"]
    entry = httpx.get(engine_url(hub, "tiny-flux2") + "/v1/models").json()["data"][0]
    assert (entry["pipeline"], entry["multi_image"], entry["max_input_images"]) == ("Flux2KleinPipeline", True, 2)
    assert entry["previews"] == "linear" and entry["max_partial_images"] > 0
    # its packed, batch-normed latents are previewed too
    events = list(client.images.edit(image=[a, b], stream=True, partial_images=1, **kwargs))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert png_size(pngs(client.images.generate(model="tiny-flux2", prompt="x", size="64x64"))[0]) == (64, 64)


# ---- batching ----

def pixels(data: bytes) -> list[int]:
    from PIL import Image  # the hub's environment has Pillow through gradio

    return list(Image.open(io.BytesIO(data)).convert("RGB").tobytes())


def same_image(a: bytes, b: bytes) -> bool:
    """Equal, or equal up to float rounding: at most 1 level off on at most 1% of the values."""
    if a == b:
        return True
    pa, pb = pixels(a), pixels(b)
    off = [abs(x - y) for x, y in zip(pa, pb, strict=True) if x != y]
    return max(off) <= 1 and len(off) <= len(pa) // 100


def test_same_shape_requests_share_pipeline_calls(client, hub):
    base = engine_url(hub, "tiny-sd")
    jobs = [(f"image {i}", 100 + i, "96x64" if i in (2, 6) else "64x64") for i in range(8)]

    def one(job: tuple[str, int, str]) -> bytes:
        prompt, seed, size = job
        return pngs(client.images.generate(model="tiny-sd", prompt=prompt, size=size,
                                           extra_body={"seed": seed, "num_inference_steps": 6}))[0]

    alone = [one(job) for job in jobs]
    before = httpx.get(base + "/stats").json()
    with ThreadPoolExecutor(8) as pool:
        batched = list(pool.map(one, jobs))
    after = httpx.get(base + "/stats").json()
    calls = after["pipeline_calls"] - before["pipeline_calls"]
    assert after["requests"] - before["requests"] == 8
    assert calls < 8, f"8 concurrent requests took {calls} pipeline calls"
    assert after["largest_batch"] >= 2 and after["largest_batch"] <= after["max_batch"] == 4
    assert [png_size(b) for b in batched] == [(96, 64) if i in (2, 6) else (64, 64) for i in range(8)]
    assert all(same_image(b, a) for b, a in zip(batched, alone, strict=True)), "a seed makes its image in a batch"


def test_a_batch_member_that_leaves_does_not_stop_the_others(hub):
    base = engine_url(hub, "tiny-sd")
    before = httpx.get(base + "/stats").json()
    body = {"prompt": "x", "size": "64x64", "num_inference_steps": 40, "stream": True}
    blocker = threading.Thread(target=httpx.post, args=(base + "/v1/images/generations",),
                               kwargs={"json": {"prompt": "b", "size": "96x64", "num_inference_steps": 12},
                                       "timeout": 60})
    blocker.start()  # holds the worker while the two streams queue, so they run as one batch
    time.sleep(0.3)
    out: dict[str, str] = {}

    def stay() -> None:
        with httpx.stream("POST", base + "/v1/images/generations", json=body, timeout=120) as r:
            out["text"] = r.read().decode()

    stayer = threading.Thread(target=stay)
    stayer.start()
    with httpx.stream("POST", base + "/v1/images/generations", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith(": progress"):
                break  # this member leaves after its first step
    stayer.join(120)
    blocker.join(60)
    assert "event: image_generation.completed" in out["text"], out.get("text", "")[-500:]
    assert [int(s) for s, _, _ in PROGRESS.findall(out["text"])][-1] == 40
    after = httpx.get(base + "/stats").json()
    assert after["pipeline_calls"] - before["pipeline_calls"] == 2, "the two streams ran as one batch"


# ---- what the engine reports ----

def test_models_entry_reports_defaults_and_limits(hub):
    entry = httpx.get(engine_url(hub, "tiny-sd") + "/v1/models").json()["data"][0]
    assert (entry["default_size"], entry["default_steps"], entry["max_size"], entry["max_n"]) == ("64x64", 2, 256, 4)
    assert entry["default_guidance"] == 7.5  # StableDiffusionPipeline's own
    assert entry["output_formats"] == ["png", "jpeg", "webp"] and entry["max_batch"] == 4
    assert (entry["max_input_images"], entry["multi_image"]) == (1, False)
    assert entry["quality_steps"] == {"low": 1, "medium": 2, "high": 3}
    assert entry["max_prompt_tokens"] == 77 and entry["max_prompt_chars"] == 32000
    assert entry["max_input_pixels"] == 50_000_000 and entry["max_partial_images"] == 3
    listed = {m["id"]: m for m in httpx.get(hub.v1 + "/models").json()["data"]}["tiny-sd"]  # the hub passes them on
    assert listed["image"]["quality_steps"] == {"low": 1, "medium": 2, "high": 3}
    assert (listed["image"]["max_batch"], listed["image"]["default_steps"]) == (4, 2)


def test_tiny_model_folder_is_a_pipeline():
    require((TINY / "model_index.json").exists(), "the tiny model is missing")
    assert {p.name for p in Path(TINY).iterdir()} >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert "noise" in (TINY / "README.md").read_text()


def test_server_modules_import_no_hub_code():
    py = ENVS_DIR / "diffusers" / "bin" / "python"
    require(py.exists(), "the diffusers engine environment is missing")
    modules = sorted(f"imageserver.{p.stem}" for p in (Path(__file__).parent.parent / "imageserver").glob("*.py")
                     if not p.stem.startswith("__"))
    assert "imageserver.app" in modules
    code = (f"import sys, {', '.join(modules)}; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('hub', 'httpx') or m == 'hub.engines.base'); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
