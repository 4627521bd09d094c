"""The Qwen-Image family for real through the hub: Qwen-Image (text to image, image to image, inpainting),
Qwen-Image-Edit (an instruction edit of one image) and Qwen-Image-Edit-Plus (several input images in one edit), each a
tiny random pipeline from `hub demo prepare --families` (demo_models/family_qwen.py), driven by the official openai
client. Images are noise: these tests check sizes, the parameters reaching the pipeline, and behaviour.

The edit models need Qwen2-VL's processor, which needs torchvision: they run in a second hub whose engine
environments have it (the diffusers-cuda lock, which runs on CPU too; HUB_VISION_ENVS_DIR). In the CPU environment an
edit model's start fails with one line that says so.
"""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest

from tests.conftest import DEMO_MODELS, ENVS_DIR, VISION_ENVS_DIR, HubProcess, require, start_hub
from tests.openai_schema import sse_events

pytestmark = [pytest.mark.engine, pytest.mark.beside]

FAMILIES = DEMO_MODELS / "families"
ARGS = 'device = "cpu"\ncpu_threads = 1\ndefault_steps = 2\ndefault_size = "64x64"\nmax_size = 256\n'
PROMPT = "a red fox sitting in fresh snow at dawn"


def table(name: str, family: str, extra: str = "") -> str:
    return (f'[models.{name}]\ntype = "image"\nengine = "diffusers"\nsource = "{FAMILIES / family}"\n'
            f"[models.{name}.args]\n{ARGS}{extra}")


def folder(family: str) -> None:
    require((FAMILIES / family / "model_index.json").exists(), "run `hub demo prepare --families`")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def png(w: int, h: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid RGB PNG, made without PIL (the hub's environment has none)."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def images(resp) -> list[bytes]:
    return [base64.b64decode(d.b64_json) for d in resp.data]


def refused(call, param: str, *words: str) -> str:
    """The message of the 400 that `call` gets, after checking it names `param` and says each of `words`."""
    with pytest.raises(openai.BadRequestError) as err:
        call()
    body = err.value.body
    assert body["param"] == param, body
    for w in words:
        assert w in body["message"], body
    return body["message"]


def stream(url: str, path: str, **kw) -> list[tuple[str | None, dict]]:
    with httpx.stream("POST", url + path, timeout=300, **kw) as r:
        assert r.status_code == 200, r.read()
        return sse_events(r.read().decode())


@pytest.fixture(scope="module")
def cpu_hub(tmp_path_factory) -> HubProcess:
    """Qwen-Image in the CPU environment; beside it an edit model there, which cannot start (no torchvision)."""
    require((ENVS_DIR / "diffusers" / "bin" / "python").exists(), "set up the diffusers engine environment")
    for f in ("qwen-image", "qwen-image-edit"):
        folder(f)
    reg = ('[hub]\nstart_timeout = "5m"\n\n' + table("qwen-image", "qwen-image") + "\n"
           + table("edit-no-vision", "qwen-image-edit"))
    h = start_hub(tmp_path_factory.mktemp("qwen-cpu"), reg)
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def vision_hub(tmp_path_factory) -> HubProcess:
    """The edit models in an engine environment with torchvision."""
    require((VISION_ENVS_DIR / "diffusers" / "bin" / "python").exists(),
            "set up the diffusers engine environment with torchvision (the diffusers-cuda lock) under "
            "HUB_VISION_ENVS_DIR")
    for f in ("qwen-image-edit", "qwen-image-edit-plus"):
        folder(f)
    reg = ('[hub]\nstart_timeout = "5m"\n\n' + table("qwen-image-edit", "qwen-image-edit") + "\n"
           + table("qwen-image-edit-plus", "qwen-image-edit-plus"))
    h = start_hub(tmp_path_factory.mktemp("qwen-vision"), reg, env={"HUB_ENVS_DIR": str(VISION_ENVS_DIR)})
    yield h
    h.stop_leaving_nothing()


@pytest.fixture(scope="module")
def cpu(cpu_hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=cpu_hub.v1, api_key="none", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def vision(vision_hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=vision_hub.v1, api_key="none", timeout=300, max_retries=0)


# ---- Qwen-Image ----

def test_qwen_image_generates_edits_and_inpaints(cpu):
    """Text to image at the asked size; image to image and inpainting through the pipelines Diffusers derives from
    it (QwenImageImg2ImgPipeline, QwenImageInpaintPipeline)."""
    out = cpu.images.generate(model="qwen-image", prompt=PROMPT, size="64x48", n=2, extra_body={"seed": 1})
    assert [png_size(b) for b in images(out)] == [(64, 48), (64, 48)]
    image = ("in.png", png(64, 64, (200, 30, 30)), "image/png")
    edited = cpu.images.edit(model="qwen-image", prompt=PROMPT, image=image, extra_body={"strength": 0.9})
    assert png_size(images(edited)[0]) == (64, 64)
    mask = ("mask.png", png(64, 64, (255, 255, 255)), "image/png")
    inpainted = cpu.images.edit(model="qwen-image", prompt=PROMPT, image=image, mask=mask, size="32x32")
    assert png_size(images(inpainted)[0]) == (32, 32)


def test_qwen_image_guidance_scale_is_its_true_cfg_scale(cpu):
    """Qwen-Image's guidance_scale is inert (its transformer embeds no guidance): a request's guidance_scale is its
    true_cfg_scale, which changes the image where the inert one would not; both at once are refused."""
    def gen(**extra) -> bytes:
        return images(cpu.images.generate(model="qwen-image", prompt=PROMPT, size="32x32",
                                          extra_body={"seed": 5, **extra}))[0]

    off, weak, strong = gen(guidance_scale=1.0), gen(guidance_scale=2.0), gen(guidance_scale=8.0)
    assert len({off, weak, strong}) == 3
    assert gen(true_cfg_scale=8.0) == strong  # the same knob by its own name
    assert gen(true_cfg_scale=8.0, negative_prompt="blurry") != strong  # a negative prompt of one's own
    refused(lambda: gen(guidance_scale=2.0, true_cfg_scale=3.0), "guidance_scale", "not both")


def test_qwen_image_sizes_and_parameters_are_its_own(cpu):
    refused(lambda: cpu.images.generate(model="qwen-image", prompt=PROMPT, size="72x64"), "size",
            "multiples of 16", "QwenImagePipeline: its VAE scales by 8 and it packs latents 2x2")
    refused(lambda: cpu.images.generate(model="qwen-image", prompt=PROMPT, extra_body={"eta": 0.5}), "eta",
            "unsupported parameter 'eta' for QwenImagePipeline", "true_cfg_scale")
    refused(lambda: cpu.images.generate(model="qwen-image", prompt=PROMPT, extra_body={"true_cfg_scale": "x"}),
            "true_cfg_scale", "must be a number")


def test_qwen_image_streams_partial_images(cpu_hub):
    body = {"model": "qwen-image", "prompt": PROMPT, "size": "32x32", "stream": True, "partial_images": 1,
            "num_inference_steps": 3}
    names = [n for n, _ in stream(cpu_hub.v1, "/images/generations", json=body)]
    assert names == ["image_generation.partial_image", "image_generation.completed"]


def test_an_edit_model_without_torchvision_fails_its_start_with_one_line(cpu_hub, cpu):
    image = ("in.png", png(32, 32, (200, 30, 30)), "image/png")
    with pytest.raises(openai.APIStatusError) as err:
        cpu.images.edit(model="edit-no-vision", prompt=PROMPT, image=image)
    message = err.value.body["message"] if isinstance(err.value.body, dict) else str(err.value.body)
    assert "needs torchvision" in message and "hub engines setup diffusers --device cuda" in message, message
    assert "Traceback" not in message and "pytorch.org" not in message, message


# ---- Qwen-Image-Edit and -Edit-Plus ----

def test_qwen_image_edit_edits_by_instruction(vision, vision_hub):
    image = ("in.png", png(48, 32, (200, 30, 30)), "image/png")
    out = vision.images.edit(model="qwen-image-edit", prompt="make the background blue", image=image)
    assert png_size(images(out)[0]) == (48, 32)  # the input's size, on the pipeline's multiple
    refused(lambda: vision.images.edit(model="qwen-image-edit", prompt="x", image=[image, image]), "image",
            "at most 1 input image")
    refused(lambda: vision.images.edit(model="qwen-image-edit", prompt="x", image=image, size="40x32"), "size",
            "multiples of 16", "QwenImageEditPipeline")
    refused(lambda: vision.images.edit(model="qwen-image-edit", prompt="x", image=image,
                                       extra_body={"strength": 0.5}), "strength",
            "unsupported parameter 'strength' for QwenImageEditPipeline")

    def edit(**extra) -> bytes:
        return images(vision.images.edit(model="qwen-image-edit", prompt="make it blue", image=image, size="32x32",
                                         extra_body={"seed": 2, **extra}))[0]

    assert edit(guidance_scale=1.0) != edit(guidance_scale=8.0)


def test_qwen_image_edit_streams_partial_images(vision_hub):
    form = {"model": "qwen-image-edit", "prompt": "make it blue", "size": "32x32", "stream": "true",
            "partial_images": "1", "num_inference_steps": "3"}
    names = [n for n, _ in stream(vision_hub.v1, "/images/edits", data=form,
                                  files={"image": ("in.png", png(32, 32, (0, 90, 200)), "image/png")})]
    assert names == ["image_edit.partial_image", "image_edit.completed"]


def test_qwen_image_edit_plus_takes_several_images_in_one_edit(vision):
    red, green = (("a.png", png(32, 32, (200, 30, 30)), "image/png"), ("b.png", png(32, 48, (20, 200, 30)),
                                                                        "image/png"))
    out = vision.images.edit(model="qwen-image-edit-plus", prompt="put the two together", image=[red, green],
                             size="32x32", extra_body={"seed": 3, "true_cfg_scale": 1.0})
    assert png_size(images(out)[0]) == (32, 32)
    refused(lambda: vision.images.edit(model="qwen-image-edit-plus", prompt="x", image=[red] * 4), "image",
            "at most 3 input images")
    refused(lambda: vision.images.edit(model="qwen-image-edit-plus", prompt="x", image=red,
                                       extra_body={"mask_image": "x"}), "mask_image", "the server sets it")
