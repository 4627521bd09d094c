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
    parse_size,
    validate_request,
)

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
