"""The Stable Diffusion families for real, through one hub: SD 1.5 (StableDiffusionPipeline), SDXL (two CLIP
encoders) and SD3.5 (an SD3 transformer, three text encoders, flow matching), each a tiny random pipeline made by
`hub demo prepare --families` (demo_models.family_sd), driven by the official openai client. Their images are noise
from random weights: these tests check shapes, sizes, what reaches each pipeline and what is refused.

Needs the diffusers engine environment (<envs>/diffusers) and the family folders (<models>/families/<family>).
"""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image  # the hub's environment has Pillow through gradio

from tests.conftest import DEMO_MODELS, ENVS_DIR, HubProcess, require, start_hub

pytestmark = [pytest.mark.engine, pytest.mark.beside]  # tiny CPU pipelines: light, beside the vLLM modules

# family -> (its pipeline class, the size multiple its own check_inputs asks for, its img2img and inpaint classes)
FAMILIES = {
    "sd1.5": ("StableDiffusionPipeline", 8, "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    "sdxl": ("StableDiffusionXLPipeline", 8, "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    "sd3.5": ("StableDiffusion3Pipeline", 16, "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
}
NAMES = list(FAMILIES)
ARGS = ('device = "cpu"\ncpu_threads = 1\ndefault_steps = 2\ndefault_size = "64x64"\nmax_size = 256\nmax_n = 2\n'
        "request_timeout = 120\n")


def registry() -> str:
    tables = ['[hub]\nstart_timeout = "5m"\n']
    for name in FAMILIES:
        tables.append(f'[models."{name}"]\ntype = "image"\nengine = "diffusers"\nmemory_gb = 0.5\n'
                      f'source = "{DEMO_MODELS / "families" / name}"\n[models."{name}".args]\n{ARGS}')
    return "\n".join(tables)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> HubProcess:
    require((ENVS_DIR / "diffusers" / "bin" / "python").exists(),
            f"the diffusers engine environment is missing at {ENVS_DIR / 'diffusers'}")
    for name in FAMILIES:
        path = DEMO_MODELS / "families" / name / "model_index.json"
        require(path.exists(), f"{path.parent} is missing: run `hub demo prepare --families {name}`")
    h = start_hub(tmp_path_factory.mktemp("family-sd-hub"), registry())
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def client(hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.v1, api_key="unused", timeout=300, max_retries=0)


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def sizes(resp) -> list[tuple[int, int]]:
    return [decode(d.b64_json).size for d in resp.data]


def png(w: int = 64, h: int = 64, colour: tuple[int, int, int] = (200, 30, 30)) -> tuple[str, bytes, str]:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return "in.png", buf.getvalue(), "image/png"


def mask_png(w: int = 64, h: int = 64) -> tuple[str, bytes, str]:
    """OpenAI's mask: transparent where the image is to be repainted (the middle square)."""
    im = Image.new("RGBA", (w, h), (0, 0, 0, 255))
    im.paste((0, 0, 0, 0), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return "mask.png", buf.getvalue(), "image/png"


def one(client: openai.OpenAI, family: str, **extra) -> bytes:
    """The PNG bytes of one 64x64 generation with `extra` in the body."""
    resp = client.images.generate(model=family, prompt="a red fox in the snow", size="64x64", extra_body=extra)
    return base64.b64decode(resp.data[0].b64_json)


@pytest.mark.parametrize("family", NAMES)
def test_generate(client, hub, family):
    resp = client.images.generate(model=family, prompt="a red fox", n=2, size="64x48", extra_body={"seed": 3})
    assert sizes(resp) == [(64, 48), (64, 48)]
    assert resp.data[0].b64_json != resp.data[1].b64_json
    entry = hub.models()[family]
    assert entry["state"] == "ready"


@pytest.mark.parametrize("family", NAMES)
def test_image_to_image(client, family):
    """An edit without a mask: the family's image-to-image pipeline (Diffusers derives it from the loaded one)."""
    resp = client.images.edit(model=family, prompt="make it blue", image=png(), size="64x64",
                              extra_body={"strength": 0.75, "seed": 1})
    assert sizes(resp) == [(64, 64)]
    resp = client.images.edit(model=family, prompt="x", image=png(48, 32))  # no size: the input's
    assert sizes(resp) == [(48, 32)]
    weaker = client.images.edit(model=family, prompt="make it blue", image=png(), size="64x64",
                                extra_body={"strength": 0.5, "seed": 1, "num_inference_steps": 4})
    stronger = client.images.edit(model=family, prompt="make it blue", image=png(), size="64x64",
                                  extra_body={"strength": 1.0, "seed": 1, "num_inference_steps": 4})
    assert weaker.data[0].b64_json != stronger.data[0].b64_json, "strength reaches the pipeline"


@pytest.mark.parametrize("family", NAMES)
def test_inpaint(client, family):
    """An edit with a mask: the family's inpainting pipeline; outside the mask the input image shows through."""
    resp = client.images.edit(model=family, prompt="a window", image=png(), mask=mask_png(), size="64x64",
                              extra_body={"seed": 2})
    assert sizes(resp) == [(64, 64)]
    plain = client.images.edit(model=family, prompt="a window", image=png(), size="64x64", extra_body={"seed": 2})
    assert plain.data[0].b64_json != resp.data[0].b64_json, "with a mask, another pipeline runs"


@pytest.mark.parametrize("family", NAMES)
def test_stream_sends_partial_images(client, hub, family):
    """Every SD family's latents are spatial (SD3 patchifies inside its transformer): the linear preview map fitted
    to its VAE decodes them, so streams carry partial images."""
    events = list(client.images.generate(model=family, prompt="a red fox", size="64x48", stream=True,
                                         partial_images=2, extra_body={"num_inference_steps": 4, "seed": 5}))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert all(decode(e.b64_json).size == (64, 48) for e in events)
    edit = list(client.images.edit(model=family, prompt="a window", image=png(), mask=mask_png(), size="64x64",
                                   stream=True, partial_images=1, extra_body={"num_inference_steps": 4}))
    assert [e.type for e in edit] == ["image_edit.partial_image", "image_edit.completed"]


@pytest.mark.parametrize("family", NAMES)
def test_guidance_scale_is_the_pipelines_cfg(client, hub, family):
    """The OpenAI-side guidance_scale is these pipelines' classifier-free guidance: two values above 1 make
    different images from one seed; at 1 and below CFG is off in all three, so 1 and 0.5 make the same image (what a
    guidance value the pipeline ignored would do everywhere)."""
    base = {"seed": 11, "num_inference_steps": 2}
    assert one(client, family, guidance_scale=7.0, **base) != one(client, family, guidance_scale=2.0, **base)
    assert one(client, family, guidance_scale=1.0, **base) == one(client, family, guidance_scale=0.5, **base)


@pytest.mark.parametrize("family", NAMES)
def test_size_off_the_pipelines_multiple_is_400_naming_it(client, family):
    pipeline, multiple, *_ = FAMILIES[family]
    bad = "72x64" if multiple == 16 else "68x64"
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model=family, prompt="x", size=bad)
    assert err.value.body["param"] == "size"
    assert f"multiples of {multiple} for this model ({pipeline}: its VAE scales by" in err.value.body["message"]
    if family == "sd3.5":
        assert "its transformer's patches are 2x2" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # an edit's size follows the same rule
        client.images.edit(model=family, prompt="x", image=png(), size=bad)
    assert err.value.body["param"] == "size"
    ok = f"{64 + multiple}x64"
    assert sizes(client.images.generate(model=family, prompt="x", size=ok)) == [(64 + multiple, 64)]


@pytest.mark.parametrize("family", NAMES)
def test_parameter_the_pipeline_does_not_take_is_400_naming_it(client, family):
    pipeline, _, img2img, _ = FAMILIES[family]
    with pytest.raises(openai.BadRequestError) as err:  # Qwen-Image's CFG knob: not an SD pipeline's
        client.images.generate(model=family, prompt="x", extra_body={"true_cfg_scale": 4.0})
    assert err.value.body["param"] == "true_cfg_scale"
    assert err.value.body["message"].startswith(f"unsupported parameter 'true_cfg_scale' for {pipeline}; accepted: ")
    with pytest.raises(openai.BadRequestError) as err:  # strength is image-to-image's, not text-to-image's
        client.images.generate(model=family, prompt="x", extra_body={"strength": 0.5})
    assert err.value.body["param"] == "strength" and pipeline in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(model=family, prompt="x", image=png(), extra_body={"sharpness": "2"})
    assert err.value.body["param"] == "sharpness" and img2img in err.value.body["message"]


# family -> the prompts of its other text encoders (SDXL: a second CLIP; SD3: a second CLIP and T5)
OTHER_PROMPTS = {"sd1.5": (), "sdxl": ("prompt_2", "negative_prompt_2"),
                 "sd3.5": ("prompt_2", "prompt_3", "negative_prompt_2", "negative_prompt_3")}


@pytest.mark.parametrize("family", NAMES)
def test_the_other_text_encoders_prompts_reach_the_pipeline(client, family):
    """Each encoder beyond the first reads its own prompt (the prompt itself when none is given): another text there
    changes the images; n=2 is one batched call, which gets that text once per image. A family without that encoder
    refuses the parameter."""
    pipeline = FAMILIES[family][0]
    base = {"seed": 4, "num_inference_steps": 2, "negative_prompt": "blurry"}
    plain = client.images.generate(model=family, prompt="a red fox", n=2, size="64x64", extra_body=base)
    for name in OTHER_PROMPTS[family]:
        other = client.images.generate(model=family, prompt="a red fox", n=2, size="64x64",
                                       extra_body={**base, name: "an oil painting of a lighthouse"})
        assert sizes(other) == [(64, 64), (64, 64)]
        assert all(a.b64_json != b.b64_json for a, b in zip(plain.data, other.data, strict=True)), name
    for name in {"prompt_2", "prompt_3"} - set(OTHER_PROMPTS[family]):
        with pytest.raises(openai.BadRequestError) as err:
            client.images.generate(model=family, prompt="x", extra_body={name: "y"})
        assert err.value.body["param"] == name
        assert err.value.body["message"].startswith(f"unsupported parameter '{name}' for {pipeline}; accepted: ")


@pytest.mark.parametrize("family", NAMES)
def test_clip_skip_is_checked_against_the_text_encoders(client, family):
    """clip_skip past the layers of the family's CLIP encoders (5 in these) failed inside the pipeline with an
    IndexError, a 500: now a 400 naming it and the range; one in range reaches the pipeline."""
    pipeline = FAMILIES[family][0]
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model=family, prompt="x", extra_body={"clip_skip": 100})
    assert err.value.body["param"] == "clip_skip"
    assert err.value.body["message"] == (f"'clip_skip' must be between 0 and 4 for {pipeline} (its CLIP text encoder "
                                         "has 5 layers), not 100")
    base = {"seed": 6, "num_inference_steps": 2}
    assert one(client, family, clip_skip=2, **base) != one(client, family, **base)
