"""The Diffusers engine for real: the tiny random Stable Diffusion pipeline behind one hub, driven by the official
openai client. Its images are noise from random weights: these tests check shapes, sizes and behaviour only.

Needs the diffusers engine environment (<envs>/diffusers) and the tiny model (<models>/tiny-sd, made by
`python -m demo_models.tiny_sd`).
"""

from __future__ import annotations

import base64
import struct
import subprocess
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import DEMO_MODELS, ENVS_DIR, HubProcess, require, start_hub

pytestmark = pytest.mark.engine

TINY = DEMO_MODELS / "tiny-sd"
ARGS = 'device = "cpu"\ncpu_threads = 1\ndefault_steps = 2\ndefault_size = "64x64"\nmax_size = 256\nmax_n = 4\n'


def registry() -> str:
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

[models.tiny-slow]
type = "image"
engine = "diffusers"
source = "{TINY}"
[models.tiny-slow.args]
{ARGS}request_timeout = 6
"""


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
    h = start_hub(tmp_path_factory.mktemp("diffusers-hub"), registry())
    yield h
    pids = h.engine_pids()
    h.stop()
    time.sleep(0.2)
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"engine processes left after hub shutdown: {left}"


@pytest.fixture(scope="module")
def client(hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.v1, api_key="unused", timeout=180, max_retries=0)


def engine_url(hub: HubProcess, model: str) -> str:
    """The engine's own address (for /memory and client-disconnect checks), once it runs."""
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
    assert after - before == 8, "each request is one job on the worker"


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
