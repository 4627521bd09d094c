"""The pure parts of the Diffusers engine: size parsing, options, request shapes, launch command, registries.

No torch here: these run in the hub's own environment.
"""

from __future__ import annotations

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
from imageserver.jobs import Work

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
                        ({"prompt": "x", "response_format": "gif"}, "response_format"),
                        ({"prompt": "x", "colour": "red"}, "colour")]:
        with pytest.raises(BadRequest) as err:
            validate_request(GenerationRequest, data)
        assert err.value.param == param
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
