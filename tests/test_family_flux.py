"""The FLUX families for real through one hub: FLUX.1 [dev] (FluxPipeline, guidance-distilled, CLIP + T5), FLUX.1
Kontext (instruction edits) and FLUX.2 [klein] (several reference images in one edit), each a tiny random pipeline
made by `hub demo prepare --families` (demo_models.family_flux), driven by the official openai client. Their images
are noise: these tests check sizes, parameters and behaviour (same seed, same image; a parameter that reaches the
pipeline changes it).
"""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import DEMO_MODELS, ENVS_DIR, HubProcess, require, start_hub

pytestmark = [pytest.mark.engine, pytest.mark.beside]

FAMILIES = {"flux-dev": "flux.1-dev", "flux-kontext": "flux.1-kontext", "flux-klein": "flux.2-klein"}
PIPELINES = {"flux-dev": "FluxPipeline", "flux-kontext": "FluxKontextPipeline", "flux-klein": "Flux2KleinPipeline"}
ARGS = 'device = "cpu"\ncpu_threads = 1\ndefault_steps = 2\ndefault_size = "64x64"\nmax_size = 256\nmax_n = 2\n'


def folder(family: str):
    return DEMO_MODELS / "families" / family


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> HubProcess:
    require((ENVS_DIR / "diffusers" / "bin" / "python").exists(),
            f"the diffusers engine environment is missing at {ENVS_DIR / 'diffusers'}")
    for family in FAMILIES.values():
        require((folder(family) / "model_index.json").exists(),
                f"{folder(family)} is missing: run `hub demo prepare --families {family}`")
    registry = '[hub]\nstart_timeout = "5m"\n' + "".join(
        f'\n[models.{name}]\ntype = "image"\nengine = "diffusers"\nsource = "{folder(family)}"\n'
        f"[models.{name}.args]\n{ARGS}" for name, family in FAMILIES.items())
    h = start_hub(tmp_path_factory.mktemp("family-flux"), registry)
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def client(hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.v1, api_key="unused", timeout=300, max_retries=0)


def engine(hub: HubProcess, model: str) -> str:
    """The engine's own address, started if it is not running."""
    if hub.models()[model]["state"] != "ready":
        httpx.post(f"{hub.url}/hub/models/{model}/load", timeout=300).raise_for_status()
    entry = hub.models()[model]
    assert entry["state"] == "ready", entry
    return f"http://127.0.0.1:{entry['process']['port']}"


def png(w: int, h: int, colour: tuple[int, int, int] = (200, 30, 30), hole: bool = False) -> tuple[str, bytes, str]:
    """An upload: a solid PNG, or (hole) an RGBA mask whose centre is transparent (the part to paint)."""
    im = Image.new("RGBA" if hole else "RGB", (w, h), colour + ((255,) if hole else ()))
    if hole:
        im.paste((0, 0, 0, 0), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return ("in.png", buf.getvalue(), "image/png")


def images(resp) -> list[bytes]:
    return [base64.b64decode(d.b64_json) for d in resp.data]


def size_of(data: bytes) -> tuple[int, int]:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    return im.size


def one(client: openai.OpenAI, model: str, edit: dict | None = None, **extra) -> bytes:
    """One 64x64 image, seed 3, with `extra` call arguments: generated, or an edit of the uploads in `edit`."""
    kwargs = {"model": model, "prompt": "a red fox", "size": "64x64", "extra_body": {"seed": 3, **extra}}
    return images(client.images.edit(**edit, **kwargs) if edit else client.images.generate(**kwargs))[0]


@pytest.mark.parametrize("model", list(FAMILIES))
def test_generate_at_the_asked_size(client, hub, model):
    resp = client.images.generate(model=model, prompt="a red fox", size="80x48", n=2, extra_body={"seed": 1})
    got = images(resp)
    assert [size_of(p) for p in got] == [(80, 48), (80, 48)] and got[0] != got[1]
    assert size_of(one(client, model)) == (64, 64)
    assert one(client, model) == one(client, model), "the same seed makes the same image"
    entry = httpx.get(engine(hub, model) + "/v1/models", timeout=30).json()["data"][0]
    assert entry["pipeline"] == PIPELINES[model]


@pytest.mark.parametrize("model", list(FAMILIES))
def test_size_off_the_multiple_is_400_naming_it(client, model):
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model=model, prompt="x", size="72x64")
    body = err.value.body
    assert body["param"] == "size"
    assert f"multiples of 16 for this model ({PIPELINES[model]}: its VAE scales by 8 and it packs latents 2x2)" \
        in body["message"]


@pytest.mark.parametrize(("model", "param"), [("flux-dev", "colour"), ("flux-klein", "true_cfg_scale"),
                                              ("flux-klein", "negative_prompt"), ("flux-kontext", "strength")])
def test_a_parameter_the_pipeline_does_not_take_is_400_naming_it(client, model, param):
    value = "blur" if param == "negative_prompt" else 0.5
    with pytest.raises(openai.BadRequestError) as err:
        if param == "strength":  # Kontext edits by instruction: no noised copy to denoise
            one(client, model, edit={"image": png(64, 64)}, strength=value)
        else:
            one(client, model, **{param: value})
    assert err.value.body["param"] == param
    assert f"unsupported parameter '{param}' for {PIPELINES[model]}" in err.value.body["message"]


def test_kontext_generates_at_the_asked_size(client):
    """Kontext derives its size from max_area unless told: the server sets it from `size`. Its tiny pipeline has
    flux.1-dev's weights, so at the asked size it makes the very image FluxPipeline makes (at 1024x1024's area, and
    resized, it would not)."""
    kwargs = {"prompt": "a red fox", "size": "96x64", "extra_body": {"seed": 4}}
    kontext = images(client.images.generate(model="flux-kontext", **kwargs))[0]
    assert kontext == images(client.images.generate(model="flux-dev", **kwargs))[0]
    assert size_of(kontext) == (96, 64)


def test_the_server_sets_kontext_max_area_from_size(client):
    with pytest.raises(openai.BadRequestError) as err:
        one(client, "flux-kontext", max_area=4096)
    assert err.value.body["param"] == "max_area" and "from 'size'" in err.value.body["message"]


# ---- guidance: the request's reaches the pipeline's real one ----

def test_flux1_dev_guidance_is_embedded_and_true_cfg_takes_a_negative_prompt(client, hub):
    base = one(client, "flux-dev", guidance_scale=3.5)
    assert one(client, "flux-dev", guidance_scale=3.5) == base
    assert one(client, "flux-dev", guidance_scale=1.0) != base, "guidance_scale reaches the transformer"
    # true CFG: off at 1 (a negative prompt alone changes nothing), on above 1 with a negative prompt or without
    assert one(client, "flux-dev", negative_prompt="blurry", true_cfg_scale=1.0) == base
    with_negative = one(client, "flux-dev", negative_prompt="blurry", true_cfg_scale=4.0)
    assert with_negative != base
    empty_negative = one(client, "flux-dev", true_cfg_scale=4.0)
    assert empty_negative not in (base, with_negative)
    # both at once: guidance embedded in a true-CFG pass
    assert one(client, "flux-dev", guidance_scale=1.0, true_cfg_scale=4.0) not in (base, empty_negative)
    entry = httpx.get(engine(hub, "flux-dev") + "/v1/models", timeout=30).json()["data"][0]
    assert entry["default_guidance"] == 3.5


def test_kontext_guidance_is_embedded(client):
    edit = {"image": png(64, 64)}
    assert one(client, "flux-kontext", edit, guidance_scale=2.5) != one(client, "flux-kontext", edit)
    assert one(client, "flux-kontext", edit, true_cfg_scale=3.0, negative_prompt="blurry") != one(
        client, "flux-kontext", edit)


def test_klein_guidance_is_classifier_free(client, hub):
    assert one(client, "flux-klein", guidance_scale=1.0) != one(client, "flux-klein", guidance_scale=4.0)
    assert one(client, "flux-klein") == one(client, "flux-klein", guidance_scale=4.0), "4 is the pipeline's default"
    entry = httpx.get(engine(hub, "flux-klein") + "/v1/models", timeout=30).json()["data"][0]
    assert entry["default_guidance"] == 4.0


# ---- edits ----

def test_flux1_dev_image_to_image_and_inpainting(client):
    image = png(64, 64)
    i2i = one(client, "flux-dev", {"image": image}, strength=1.0)
    assert size_of(i2i) == (64, 64)
    # 2 steps: strength 0.5 skips the first
    assert one(client, "flux-dev", {"image": image}, strength=0.5) != i2i, "strength reaches FluxImg2ImgPipeline"
    painted = one(client, "flux-dev", {"image": image, "mask": png(64, 64, hole=True)}, strength=1.0)
    assert size_of(painted) == (64, 64) and painted != i2i
    resp = client.images.edit(model="flux-dev", prompt="x", image=png(96, 64), n=1)  # no size: the input's
    assert size_of(images(resp)[0]) == (96, 64)


def test_kontext_edits_by_instruction_at_the_asked_size(client):
    image = png(64, 64)
    resp = client.images.edit(model="flux-kontext", prompt="make it blue", image=image, size="96x64",
                              extra_body={"seed": 3})
    assert size_of(images(resp)[0]) == (96, 64)
    red = one(client, "flux-kontext", {"image": image})
    blue = one(client, "flux-kontext", {"image": png(64, 64, (0, 0, 200))})
    assert red != blue, "the input image takes part"
    with pytest.raises(openai.BadRequestError) as err:
        one(client, "flux-kontext", {"image": image, "mask": png(64, 64, hole=True)})
    assert err.value.body["param"] == "mask" and "cannot inpaint with a mask" in err.value.body["message"]


def test_klein_edits_with_several_reference_images(client, hub):
    a, b = png(64, 64), png(96, 64, (0, 0, 200))
    both = one(client, "flux-klein", {"image": [a, b]})
    assert size_of(both) == (64, 64)
    assert one(client, "flux-klein", {"image": [a]}) != both, "the second image took part"
    entry = httpx.get(engine(hub, "flux-klein") + "/v1/models", timeout=30).json()["data"][0]
    assert (entry["multi_image"], entry["max_input_images"]) == (True, 10)
    # FLUX.2 checks its references (at least 64 px a side): the server resizes them to the output size first
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model="flux-klein", prompt="x", image=[a, b], size="80x48")
    assert err.value.body["param"] == "image" and "at least 64px" in err.value.body["message"]


# ---- streams ----

@pytest.mark.parametrize("model", list(FAMILIES))
def test_stream_sends_partial_images(client, hub, model):
    kwargs = {"model": model, "prompt": "a red fox", "size": "80x48", "stream": True, "partial_images": 2,
              "extra_body": {"seed": 5, "num_inference_steps": 4}}
    events = list(client.images.generate(**kwargs))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert all(size_of(base64.b64decode(e.b64_json)) == (80, 48) for e in events)
    assert events[0].b64_json != events[1].b64_json != events[2].b64_json
    entry = httpx.get(engine(hub, model) + "/v1/models", timeout=30).json()["data"][0]
    assert entry["previews"] == "linear"
    if model != "flux-dev":  # the instruction edits (FLUX.2: of several images)
        image = [png(64, 64), png(64, 64, (0, 0, 200))] if model == "flux-klein" else png(64, 64)
        events = list(client.images.edit(image=image, **{**kwargs, "size": "64x64"}))
        assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
        assert all(size_of(base64.b64decode(e.b64_json)) == (64, 64) for e in events)
