"""LoRA adapters of an image model, without an engine: what the diffusers engine passes to the image server
(--loras, the mounts of a container) and how the server reads a request's adapter (imageserver.api.pick_lora).
tests/test_lora_image.py runs them for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.engines.base import LaunchContext
from hub.engines.diffusers import engine
from hub.registry import parse_registry
from hub.runtimes.container import container_config
from imageserver.api import BadRequest, GenerationRequest, Loras, LoraSpec, pick_lora, validate_request
from imageserver.jobs import Work


def _registry(tmp: Path):
    return parse_registry({
        "hub": {"state_dir": str(tmp / "state")},
        "models": {"sd": {"type": "image", "engine": "diffusers", "source": "./m", "loras": {
            "pixel": "./loras/pixel", "st": "{state_dir}/loras/st.safetensors",
            "ink": {"source": "org/ink-lora", "weight_name": "ink.safetensors", "scale": 0.7}}}},
    }, tmp / "models.toml")


def test_launch_passes_resolved_adapters_and_mounts_local_ones(tmp_path):
    reg = _registry(tmp_path)
    spec = engine.launch(LaunchContext("sd", reg.models["sd"], reg, 9123))
    loras = Loras.validate_json(spec.args[spec.args.index("--loras") + 1])
    assert loras == {"pixel": LoraSpec(source=str(tmp_path / "loras" / "pixel")),
                     "st": LoraSpec(source=str(tmp_path / "state" / "loras" / "st.safetensors")),
                     "ink": LoraSpec(source="org/ink-lora", weight_name="ink.safetensors", scale=0.7)}
    assert spec.extra_paths == [str(tmp_path / "loras" / "pixel"), str(tmp_path / "state" / "loras" / "st.safetensors")]
    volumes = container_config("sd", spec, 9123, reg.host_config("local"))["volumes"]
    for path in (spec.model_path, *spec.extra_paths):
        assert volumes[path] == {"bind": path, "mode": "ro"}
    assert not any("org/ink-lora" in v for v in volumes)  # a hub repo goes through the Hugging Face cache


def test_no_adapters_no_flag(tmp_path):
    reg = parse_registry({"models": {"sd": {"type": "image", "engine": "diffusers", "source": "/m"}}},
                         tmp_path / "models.toml")
    spec = engine.launch(LaunchContext("sd", reg.models["sd"], reg, 9123))
    assert "--loras" not in spec.args and spec.extra_paths == []


LORAS = {"pixel": LoraSpec(source="/p"), "ink": LoraSpec(source="/i", scale=0.8)}


def _pick(loras=LORAS, **body):
    return pick_lora(validate_request(GenerationRequest, {"prompt": "x", **body}), "sd", loras)


@pytest.mark.parametrize("body, want", [
    ({}, None),
    ({"lora": "pixel"}, ("pixel", 1.0)),
    ({"lora": "ink"}, ("ink", 0.8)),  # the registry's scale is the default
    ({"lora": "ink", "lora_scale": 0}, ("ink", 0.0)),
    ({"model": "sd:pixel"}, ("pixel", 1.0)),
    ({"model": "sd:pixel", "lora": "pixel", "lora_scale": "0.5"}, ("pixel", 0.5)),  # multipart sends strings
    ({"model": "org/repo:v2"}, None),  # a suffix that is no adapter is part of the name
])
def test_pick_lora(body, want):
    assert _pick(**body) == want


@pytest.mark.parametrize("body, loras, param, says", [
    ({"lora": "nope"}, LORAS, "lora", "its adapters: ink, pixel"),
    ({"lora_scale": 0.5}, LORAS, "lora_scale", "needs an adapter"),
    ({"model": "sd:pixel", "lora": "ink"}, LORAS, "lora", "ask for one"),
    ({"lora": "pixel"}, {}, "lora", "no LoRA adapters"),
])
def test_pick_lora_refuses(body, loras, param, says):
    with pytest.raises(BadRequest) as e:
        _pick(loras, **body)
    assert e.value.param == param and says in e.value.message


@pytest.mark.parametrize("scale", ["strong", 11, True])
def test_bad_lora_scale(scale):
    with pytest.raises(BadRequest) as e:
        _pick(lora="pixel", lora_scale=scale)
    assert e.value.param == "lora_scale"


def test_batch_key_holds_the_adapter():
    def work(lora):
        return Work("text2image", "model", {"width": 64}, "x", None, 1, 0, lora=lora)
    assert work(None).key() != work(("pixel", 1.0)).key() != work(("pixel", 0.5)).key()
    assert work(("ink", 1.0)).key() == work(("ink", 1.0)).key()


def test_a_base_whose_name_ends_in_an_adapters_name_runs_without_it():
    req = validate_request(GenerationRequest, {"prompt": "x", "model": "sd:pixel"})
    assert pick_lora(req, "sd:pixel", LORAS) is None  # the served model itself, not adapter pixel
    req = validate_request(GenerationRequest, {"prompt": "x", "model": "sd:pixel:pixel"})
    assert pick_lora(req, "sd:pixel", LORAS) == ("pixel", 1.0)


class _Adapters:
    """The LoRA switches of a Diffusers pipeline; set_adapters fails while `fail` is set."""

    def __init__(self) -> None:
        self.enabled, self.set, self.fail = False, None, False

    def enable_lora(self) -> None:
        self.enabled = True

    def disable_lora(self) -> None:
        self.enabled = False

    def set_adapters(self, names, adapter_weights) -> None:
        if self.fail:
            raise RuntimeError("set_adapters failed")
        self.set = (names, adapter_weights)


def test_a_switch_that_fails_part_way_is_redone_by_the_next_call():
    from imageserver.api import ServerOptions
    from imageserver.pipelines import Pipelines

    pipes, pipe = Pipelines("/m", ServerOptions(), loras=LORAS), _Adapters()
    pipe.fail = True
    with pytest.raises(RuntimeError):
        pipes._use_lora(pipe, ("pixel", 1.0))  # enabled, then failed: the adapters may apply
    pipe.fail = False
    pipes._use_lora(pipe, None)  # the next request asks for the base: the adapters are switched off
    assert not pipe.enabled and pipes.active is None
    pipe.fail = True
    with pytest.raises(RuntimeError):
        pipes._use_lora(pipe, ("ink", 0.8))
    pipe.fail = False
    pipe.enabled = False  # whatever the failure left
    pipes._use_lora(pipe, ("ink", 0.8))
    assert pipe.enabled and pipe.set == (["ink"], [0.8]) and pipes.active == ("ink", 0.8)
