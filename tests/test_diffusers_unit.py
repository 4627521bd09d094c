"""The pure parts of the Diffusers engine: size parsing, options, request shapes, launch command, registries; what a
pipeline accepts (sizes, call arguments), from stand-in classes shaped like Diffusers' pipelines, and through the
server's routes around them.

No torch here: these run in the hub's own environment.
"""

from __future__ import annotations

import contextlib
import time
import tomllib
from pathlib import Path

import pytest

from hub.engines.base import LaunchContext
from hub.engines.diffusers import DiffusersArgs, engine
from hub.errors import ConfigError
from hub.registry import load_registry, parse_registry
from hub.runtimes.process import ProcessRuntime
from imageserver.api import (
    BadRequest,
    EditRequest,
    GenerationRequest,
    ServerOptions,
    check_n,
    check_output,
    check_prompt_chars,
    parse_size,
    partial_steps,
    resolve_steps,
    validate_request,
)
from imageserver.app import create_app
from imageserver.jobs import Work
from imageserver.pipelines import Pipelines
from imageserver.rules import call_params, check_call_args, size_rule

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("value", "expected"), [("64x64", (64, 64)), ("512X256", (512, 256)), (" 8 x 16 ", (8, 16))])
def test_parse_size_accepts_multiples_of_8(value, expected):
    assert parse_size(value, 512) == expected


@pytest.mark.parametrize(("value", "words"), [
    ("65x64", "multiples of 8"), ("0x64", "multiples of 8"), ("1024x64", "at most 512"), ("64", "512x512"),
    ("axb", "512x512"), ("64x64x64", "512x512"), ("", "512x512"),
])
def test_parse_size_rejects_with_the_param_named(value, words):
    with pytest.raises(BadRequest) as e:
        parse_size(value, 512)
    assert e.value.param == "size"
    assert words in e.value.message
    body = e.value.body()["error"]
    assert body["type"] == "invalid_request_error" and body["param"] == "size"


def test_options_defaults_and_validation():
    o = ServerOptions()
    assert (o.device, o.dtype, o.cpu_offload) == ("auto", "auto", "none")
    assert ServerOptions.model_validate({"dtype": "bf16", "cpu_offload": "model"}).cpu_offload == "model"
    for bad in ({"dtype": "int8"}, {"cpu_offload": "disk"}, {"max_n": 0}, {"default_size": "63x64"},
                {"unknown": 1}, {"request_timeout": 0}):
        with pytest.raises(ValueError):
            ServerOptions.model_validate(bad)


def test_requests_validate_and_name_the_param():
    r = validate_request(GenerationRequest, {"prompt": "a cat", "n": 2, "size": "64x64", "seed": 3})
    assert (r.n, r.seed, r.response_format) == (2, 3, None)
    # multipart values arrive as strings
    e = validate_request(EditRequest, {"prompt": "x", "n": "2", "strength": "0.5", "num_inference_steps": "4"})
    assert (e.n, e.strength, e.num_inference_steps) == (2, 0.5, 4)
    for data, param in [({"prompt": "  "}, "prompt"), ({}, "prompt"), ({"prompt": "x", "n": 0}, "n"),
                        ({"prompt": "x", "response_format": "gif"}, "response_format")]:
        with pytest.raises(BadRequest) as err:
            validate_request(GenerationRequest, data)
        assert err.value.param == param
    # a parameter outside the request's fields is kept for the pipeline's __call__, which decides (see below)
    other = validate_request(GenerationRequest, {"prompt": "x", "colour": "red", "eta": 0.5})
    assert other.call_args == {"colour": "red", "eta": 0.5} and "colour" not in other.model_dump()
    with pytest.raises(BadRequest) as err:
        check_call_args(other.call_args, call_params(SDLike), "SDLike", GenerationRequest.model_fields)
    assert err.value.param == "colour"
    with pytest.raises(BadRequest) as err:
        validate_request(GenerationRequest, {"prompt": "x", "c\u00f6lour": 1})
    assert "printable ASCII" in err.value.message
    with pytest.raises(BadRequest) as err:
        validate_request(EditRequest, {"prompt": "x", "strength": "1.5"})
    assert err.value.param == "strength"


def test_streaming_format_and_openai_fields_validate():
    r = validate_request(GenerationRequest, {"prompt": "x", "stream": True, "partial_images": 3,
                                             "output_format": "webp", "output_compression": 40,
                                             "background": "opaque", "quality": "low"})
    assert (r.stream, r.partial_images, r.output_format, r.output_compression) == (True, 3, "webp", 40)
    e = validate_request(EditRequest, {"prompt": "x", "stream": "true", "partial_images": "1"})  # multipart strings
    assert (e.stream, e.partial_images) == (True, 1)
    for data, param in [({"partial_images": 4}, "partial_images"), ({"output_format": "gif"}, "output_format"),
                        ({"output_compression": 101}, "output_compression"), ({"background": "black"}, "background"),
                        ({"quality": "max"}, "quality")]:
        with pytest.raises(BadRequest) as err:
            validate_request(GenerationRequest, {"prompt": "x", **data})
        assert err.value.param == param


def test_output_checks():
    assert check_output(validate_request(GenerationRequest, {"prompt": "x"})) == "png"
    assert check_output(validate_request(GenerationRequest, {"prompt": "x", "output_format": "jpeg",
                                                             "background": "auto"})) == "jpeg"
    with pytest.raises(BadRequest) as e:
        check_output(validate_request(GenerationRequest, {"prompt": "x", "background": "transparent"}))
    assert e.value.param == "background" and "opaque" in e.value.message
    with pytest.raises(BadRequest) as e:
        check_output(validate_request(GenerationRequest, {"prompt": "x", "stream": True, "response_format": "url"}))
    assert e.value.param == "response_format"


def test_quality_maps_to_steps_and_explicit_steps_win():
    opts = ServerOptions(default_steps=30)
    steps = {q: resolve_steps(validate_request(GenerationRequest, {"prompt": "x", "quality": q}), opts)
             for q in ("low", "medium", "high", "auto", "standard", "hd")}
    assert steps == {"low": (9, "low"), "medium": (18, "medium"), "high": (30, "high"), "auto": (30, "auto"),
                     "standard": (18, "medium"), "hd": (30, "high")}
    assert resolve_steps(validate_request(GenerationRequest, {"prompt": "x"}), opts) == (30, "auto")
    own_high = ServerOptions.model_validate({"default_steps": 4, "quality_steps": {"high": 9}})
    assert resolve_steps(validate_request(GenerationRequest, {"prompt": "x"}), own_high) == (4, "auto")
    explicit = validate_request(GenerationRequest, {"prompt": "x", "quality": "low", "num_inference_steps": 7})
    assert resolve_steps(explicit, opts) == (7, "auto")
    own = ServerOptions.model_validate({"default_steps": 4, "quality_steps": {"low": 1, "high": 8}})
    assert own.quality_steps.model_dump() == {"low": 1, "medium": 2, "high": 8}
    assert ServerOptions.model_validate_json(own.model_dump_json()) == own, "the hub passes them on as JSON"
    with pytest.raises(ValueError):
        ServerOptions.model_validate({"quality_steps": {"ultra": 3}})


def test_partial_images_are_evenly_spaced_before_the_last_step():
    assert partial_steps(20, 3) == [5, 10, 15]
    assert partial_steps(6, 2) == [2, 4]
    assert partial_steps(4, 1) == [2]
    assert partial_steps(2, 3) == [1], "fewer previews than asked when there are too few steps"
    assert partial_steps(1, 2) == [] and partial_steps(10, 0) == []


def test_limits_name_themselves():
    with pytest.raises(BadRequest) as e:
        validate_request(GenerationRequest, {"prompt": "a \ud800 b"})
    assert e.value.param == "prompt" and "Unicode" in e.value.message
    with pytest.raises(BadRequest) as e:
        validate_request(GenerationRequest, {"prompt": "x", "negative_prompt": "\udfff"})
    assert e.value.param == "negative_prompt"
    req = validate_request(GenerationRequest, {"prompt": "x" * 11, "negative_prompt": "y"})
    check_prompt_chars(req, 11)
    with pytest.raises(BadRequest) as e:
        check_prompt_chars(req, 10)
    assert e.value.param == "prompt" and "max_prompt_chars" in e.value.message and "11 characters" in e.value.message
    o = ServerOptions()
    assert (o.max_batch, o.max_prompt_tokens, o.max_input_images, o.preview_vae) == (1, None, None, None)
    assert o.max_input_pixels < 10000 * 10000


def test_batch_key_is_the_shape():
    def work(task="text2image", negative=None, **shared):
        return Work(task, "model", {"width": 64, "height": 64, "num_inference_steps": 4, **shared}, "p", negative, 1,
                    0)

    assert work().key() == work(guidance_scale=None).key() != work(guidance_scale=3.0).key()
    assert work().key() != work(width=96).key() and work().key() != work(negative="blur").key()
    assert work(negative="a").key() == work(negative="b").key(), "prompts differ within a batch"
    assert work("image2image", strength=0.5).key() != work("image2image", strength=0.6).key()
    assert work("edit").key() is None, "instruction edits run alone"


def test_check_n():
    check_n(4, 4)
    with pytest.raises(BadRequest) as e:
        check_n(5, 4)
    assert e.value.param == "n" and "at most 4" in e.value.message


def _registry(args: str) -> str:
    return f'[models.img]\ntype = "image"\nengine = "diffusers"\nsource = "./m"\n[models.img.args]\n{args}\n'


def test_registry_args_are_the_server_options(tmp_path):
    assert issubclass(DiffusersArgs, ServerOptions)
    with pytest.raises(ConfigError) as e:
        parse_registry(tomllib.loads(_registry('dtype = "int4"\nwarp = 9')), tmp_path / "models.toml")
    text = "\n".join(e.value.problems)
    assert "models.img.args.dtype" in text and "models.img.args.warp: unknown key" in text


def test_launch_command_passes_the_options(tmp_path):
    envs = tmp_path / "envs"
    (envs / "diffusers" / "bin").mkdir(parents=True)
    (envs / "diffusers" / "bin" / "python").write_text("")
    reg = parse_registry(tomllib.loads(_registry('max_n = 2\ncpu_threads = 1')), tmp_path / "models.toml")
    spec = engine.launch(LaunchContext("img", reg.models["img"], reg, 9123))
    argv, _ = ProcessRuntime(tmp_path / "logs", envs).command_line(spec)
    assert argv[:5] == [str(envs / "diffusers" / "bin" / "python"), "-m", "imageserver", "--host", "127.0.0.1"]
    assert spec.model_path == str(tmp_path / "m")  # a local folder: a container gets it mounted
    assert argv[argv.index("--model") + 1] == str(tmp_path / "m")
    assert argv[argv.index("--port") + 1] == "9123" and spec.served_name == "img"
    opts = ServerOptions.model_validate_json(argv[argv.index("--options") + 1])
    assert (opts.max_n, opts.cpu_threads) == (2, 1)


def test_seed_and_demo_registries():
    seed = load_registry(ROOT / "models.toml").models["qwen-image-edit"]
    a = DiffusersArgs.model_validate(seed.args)
    assert (a.pipeline, a.dtype, seed.memory_gb) == ("QwenImageEditPipeline", "bf16", 58)
    text = (ROOT / "models.demo.toml").read_text()
    demo = tomllib.loads(text)["models"]["tiny-sd"]
    assert demo["engine"] == "diffusers" and demo["args"]["device"] == "cpu"
    assert demo["source"] == "{state_dir}/models/tiny-sd"
    assert "noise" in text and "random weights" in text


# ---- what the loaded pipeline accepts: sizes and call arguments, from stand-ins shaped like Diffusers' ----

class SDLike:
    """Shaped like StableDiffusionPipeline: a UNet pipeline (sizes in multiples of 8), its __call__'s arguments."""

    vae_scale_factor = 8

    def __call__(self, prompt: str | list[str] | None = None,
                 height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] | None = None, num_images_per_prompt: int | None = 1,
                 eta: float = 0.0, generator=None, latents=None, output_type: str | None = "pil",
                 return_dict: bool = True, clip_skip: int | None = None, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] = ("latents",), **kwargs): ...


class FluxLike:
    """Shaped like FluxPipeline: it packs its latents 2x2 and takes true_cfg_scale, not eta."""

    vae_scale_factor = 8

    def _pack_latents(self, latents): ...

    def __call__(self, prompt=None, negative_prompt=None, true_cfg_scale: float = 1.0, height: int | None = None,
                 width: int | None = None, num_inference_steps: int = 28, sigmas: list[float] | None = None,
                 guidance_scale: float = 3.5, max_sequence_length: int = 512, _auto_resize: bool = True): ...


class KleinLike(FluxLike):
    """Shaped like Flux2KleinPipeline: no negative prompt, a flag as a plain argument."""

    def __call__(self, prompt=None, image=None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 4.0, use_kv_cache=True): ...


class SD3Like:
    vae_scale_factor = 8
    patch_size = 2


class TinySDLike:
    vae_scale_factor = 2  # the demo's tiny-sd: its VAE scales by 2, the pipeline still checks 8


def test_size_rule_from_the_vae_scale_factor_and_latent_packing():
    assert size_rule(SDLike()) == (8, "SDLike: its VAE scales by 8")
    assert size_rule(FluxLike()) == (16, "FluxLike: its VAE scales by 8 and it packs latents 2x2")
    assert size_rule(SD3Like()) == (16, "SD3Like: its VAE scales by 8 and its transformer's patches are 2x2")
    assert size_rule(TinySDLike()) == (8, "TinySDLike: its VAE scales by 2, and the pipeline checks 8")
    wide = type("WideVaeFlux", (FluxLike,), {"vae_scale_factor": 16})
    assert size_rule(wide())[0] == 32
    assert size_rule(object())[0] == 8, "no VAE scale factor: Diffusers' default 8"
    multiple, why = size_rule(FluxLike())
    with pytest.raises(BadRequest) as e:
        parse_size("72x64", 1024, "size", multiple, why)
    assert e.value.param == "size"
    assert e.value.message == ("'size' 72x64: width and height must be multiples of 16 for this model (FluxLike: its "
                               "VAE scales by 8 and it packs latents 2x2), e.g. 64x64")
    assert parse_size("80x64", 1024, "size", multiple, why) == (80, 64)
    assert parse_size("72x64", 1024, "size", *size_rule(SDLike())) == (72, 64)


def test_call_arguments_come_from_the_pipelines_signature():
    assert call_params(SDLike) == {"num_inference_steps": int, "guidance_scale": float, "negative_prompt": str,
                                   "eta": float, "clip_skip": int}
    # the server's own (size, max_sequence_length), lists, private ones and **kwargs are not a request's to set
    assert call_params(FluxLike) == {"negative_prompt": str, "true_cfg_scale": float, "num_inference_steps": int,
                                     "guidance_scale": float}
    assert call_params(KleinLike) == {"num_inference_steps": int, "guidance_scale": float, "use_kv_cache": bool}


def test_an_argument_the_pipeline_does_not_take_is_400_naming_it():
    def refused(asked: dict, cls: type = SDLike) -> BadRequest:
        with pytest.raises(BadRequest) as e:
            check_call_args(asked, call_params(cls), cls.__name__, GenerationRequest.model_fields)
        assert e.value.body()["error"]["type"] == "invalid_request_error"
        return e.value

    e = refused({"true_cfg_scale": 4})
    assert e.param == "true_cfg_scale"
    assert e.message.startswith("unsupported parameter 'true_cfg_scale' for SDLike; accepted: clip_skip, eta, "
                                "guidance_scale, negative_prompt, num_inference_steps; and the server's own: ")
    assert "size" in e.message and "seed" in e.message
    e = refused({"negative_prompt": "blur"}, KleinLike)
    assert e.param == "negative_prompt" and e.message.startswith(
        "unsupported parameter 'negative_prompt' for KleinLike; accepted: guidance_scale, num_inference_steps, "
        "use_kv_cache")
    assert refused({"eta": 0.1}, FluxLike).param == "eta"
    e = refused({"width": 64})
    assert e.param == "width" and "for SDLike: the server sets it from 'size'" in e.message
    assert "the prompt token limit" in refused({"max_sequence_length": 77}, FluxLike).message
    assert refused({"output_type": "latent"}).param == "output_type"
    assert "from 'size'" in refused({"max_area": 10**10}, FluxLike).message  # Kontext's size, past max_size
    # taken, but not as sent
    for asked, words in [({"eta": "abc"}, "'eta' must be a number between -1000000 and 1000000 for SDLike, not 'abc'"),
                         ({"clip_skip": 1.5}, "an integer"), ({"clip_skip": True}, "an integer"),
                         ({"eta": float("nan")}, "a number"), ({"eta": [1]}, "a number"),
                         # numbers that would overflow inside the pipeline (a 500 there) are refused here
                         ({"clip_skip": 10**400}, "an integer between -2147483647 and 2147483647"),
                         ({"eta": 1e308}, "a number between"),
                         ({"eta": list(range(100_000))}, "not [0, 1, 2, 3, 4, 5, ...]"),  # echoed short
                         ({"use_kv_cache": "maybe"}, "true or false")]:
        cls = KleinLike if "use_kv_cache" in asked else SDLike
        e = refused(asked, cls)
        assert e.param == next(iter(asked)) and words in e.message, e.message


def test_an_argument_the_pipeline_takes_is_passed_typed():
    assert check_call_args({"true_cfg_scale": 4, "negative_prompt": "blur"}, call_params(FluxLike), "FluxLike") == {
        "true_cfg_scale": 4.0, "negative_prompt": "blur"}
    typed = check_call_args({"eta": "0.5", "clip_skip": "2", "num_inference_steps": 3}, call_params(SDLike), "SDLike")
    assert typed == {"eta": 0.5, "clip_skip": 2, "num_inference_steps": 3}, "multipart fields arrive as strings"
    assert type(typed["eta"]) is float and type(typed["clip_skip"]) is int
    assert check_call_args({"use_kv_cache": "false"}, call_params(KleinLike), "KleinLike") == {"use_kv_cache": False}
    assert check_call_args({}, call_params(KleinLike), "KleinLike") == {}


# ---- the same checks through the server's routes, on the real Pipelines around a stand-in (no torch) ----

class StandInPipelines(Pipelines):
    """Pipelines whose pipeline is a stand-in class: loading, deriving and calling skip Diffusers and torch; the
    tasks' arguments are read by the real code."""

    def __init__(self, cls: type, opts: ServerOptions) -> None:
        super().__init__("stand-in", opts)
        self.cls = cls
        self.seen: list[dict] = []

    def load(self) -> None:
        self.base = self.cls()
        self._derive()

    def _from_pipe(self, task: str):
        if task != "text2image":
            raise ValueError(f"no {task} pipeline for {self.cls.__name__}")
        return self.base

    def run(self, jobs):
        from PIL import Image

        self.seen += [dict(j.work.shared, negative_prompt=j.work.negative_prompt) for j in jobs]
        w = jobs[0].work.shared
        return [[Image.new("RGB", (w["width"], w["height"]))] * j.work.n for j in jobs]


@contextlib.contextmanager
def stand_in_server(cls: type):
    from fastapi.testclient import TestClient

    opts = ServerOptions(device="cpu", default_size="64x64", default_steps=2)
    pipes = StandInPipelines(cls, opts)
    with TestClient(create_app("stand-in", "img", opts, pipes=pipes)) as client:
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the stand-in never loaded"
            time.sleep(0.02)
        yield client, pipes


def test_the_routes_refuse_what_the_pipeline_cannot_take_and_pass_what_it_can():
    with stand_in_server(FluxLike) as (client, pipes):
        r = client.post("/v1/images/generations", json={"prompt": "x", "size": "72x64"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "size"
        assert "multiples of 16 for this model (FluxLike: its VAE scales by 8 and it packs latents 2x2)" in r.text
        r = client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64", "eta": 0.3})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert (err["param"], err["type"], err["code"]) == ("eta", "invalid_request_error", "invalid_value")
        assert err["message"].startswith("unsupported parameter 'eta' for FluxLike; accepted: guidance_scale, "
                                         "negative_prompt, num_inference_steps, true_cfg_scale;")
        assert pipes.seen == [], "refused before it queued"
        r = client.post("/v1/images/generations", json={"prompt": "x", "size": "80x64", "true_cfg_scale": 4,
                                                        "negative_prompt": "blur", "seed": 1})
        assert r.status_code == 200, r.text
        assert pipes.seen[-1]["true_cfg_scale"] == 4.0 and pipes.seen[-1]["negative_prompt"] == "blur"
        assert pipes.seen[-1]["width"] == 80
        # an edit: this stand-in has no image-to-image pipeline, so it is refused before the upload is decoded
        r = client.post("/v1/images/edits", data={"prompt": "x"}, files={"image": ("a.png", b"not even a png")})
        assert r.status_code == 400 and r.json()["error"]["param"] == "image"
        assert "cannot edit an image without a mask: ValueError: no image2image pipeline" in r.text
    with stand_in_server(KleinLike) as (client, pipes):
        r = client.post("/v1/images/generations", json={"prompt": "x", "negative_prompt": "blur"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "negative_prompt", r.text
        assert "unsupported parameter 'negative_prompt' for KleinLike" in r.text
        r = client.post("/v1/images/generations", json={"prompt": "x", "use_kv_cache": False})
        assert r.status_code == 200 and pipes.seen[-1]["use_kv_cache"] is False
