"""The pure logic the Stable Diffusion families need, with stand-in pipeline classes (no torch): the prompts of their
second and third text encoders (`str | list[str]`) are request parameters, and a batched call gets them as one list
as long as its prompts."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import Any

import pytest

from imageserver.api import BadRequest
from imageserver.jobs import Job, Work
from imageserver.pipelines import Pipelines, clip_text_model_alias
from imageserver.rules import arg_bounds, call_params, check_bounds, check_call_args, is_batch_text, size_rule


class ThreeEncoders:
    """Shaped like StableDiffusion3Pipeline.__call__ where it matters here."""

    vae_scale_factor = 8
    patch_size = 2

    def __call__(self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None,
                 prompt_3: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 negative_prompt_2: str | list[str] | None = None, num_images_per_prompt: int | None = 1,
                 guidance_scale: float = 7.0, joint_attention_kwargs: dict[str, Any] | None = None,
                 sampler: str = "euler", generator: Any = None,
                 negative_prompt_embeds: str | list[str] | None = None) -> None:  # mis-annotated, as FLUX.2 klein's
        """Nothing: only the signature is read."""


def test_second_and_third_prompts_are_string_parameters():
    params = call_params(ThreeEncoders)
    assert {k: params[k] for k in ("prompt_2", "prompt_3", "negative_prompt_2", "sampler")} == dict.fromkeys(
        ("prompt_2", "prompt_3", "negative_prompt_2", "sampler"), str)
    assert "joint_attention_kwargs" not in params and "prompt" not in params
    assert "negative_prompt_embeds" not in params, "a tensor, whatever its annotation says"
    sig = inspect.signature(ThreeEncoders.__call__).parameters
    assert [n for n, p in sig.items() if is_batch_text(p)] == ["prompt", "prompt_2", "prompt_3", "negative_prompt",
                                                                "negative_prompt_2"]
    assert check_call_args({"prompt_3": "oil painting"}, params, "ThreeEncoders") == {"prompt_3": "oil painting"}
    with pytest.raises(BadRequest, match="'prompt_2' must be a string for ThreeEncoders") as err:
        check_call_args({"prompt_2": ["a", "b"]}, params, "ThreeEncoders")  # the list form is the server's
    assert err.value.param == "prompt_2"


def test_sd3_size_rule_is_the_vae_times_the_patch():
    assert size_rule(ThreeEncoders())[0] == 16


def plan(monkeypatch: pytest.MonkeyPatch, works: list[Work]) -> list[tuple[dict[str, Any], list]]:
    monkeypatch.setattr(Pipelines, "_generator", staticmethod(lambda seed: f"gen{seed}"))
    pipes = Pipelines.__new__(Pipelines)
    jobs = [Job(w, None, None) for w in works]  # type: ignore[arg-type]  # never awaited here
    return pipes._plan(jobs, inspect.signature(ThreeEncoders.__call__).parameters)


def test_a_batched_call_gets_the_other_encoders_prompts_once_per_image(monkeypatch):
    shared = {"width": 64, "height": 64, "prompt_2": "oil painting", "prompt_3": "a fox", "guidance_scale": 5.0}
    works = [Work("text2image", "model", dict(shared), "one", None, 1, 10),
             Work("text2image", "model", dict(shared), "two", None, 2, 20)]
    [(call, members)] = plan(monkeypatch, works)
    assert call["prompt"] == ["one", "two", "two"] and len(members) == 3
    assert call["prompt_2"] == ["oil painting"] * 3 and call["prompt_3"] == ["a fox"] * 3
    assert "guidance_scale" not in call, "the batch's numbers stay shared"
    assert call["generator"] == ["gen10", "gen20", "gen21"]


def encoder(layers: int) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(num_hidden_layers=layers))


def test_clip_skip_is_bounded_by_the_clip_encoders_layers():
    sdxl = SimpleNamespace(text_encoder=encoder(12), text_encoder_2=encoder(32))
    assert arg_bounds(sdxl) == {"clip_skip": (0, 11, "its CLIP text encoder has 12 layers")}
    assert arg_bounds(SimpleNamespace(transformer=object())) == {}, "no text encoder: nothing to bound"
    check_bounds({"clip_skip": 11, "eta": 5.0}, arg_bounds(sdxl), "StableDiffusionXLPipeline")
    for bad in (12, -1):
        with pytest.raises(BadRequest) as err:
            check_bounds({"clip_skip": bad}, arg_bounds(sdxl), "StableDiffusionXLPipeline")
        assert err.value.param == "clip_skip"
        assert err.value.message == (f"'clip_skip' must be between 0 and 11 for StableDiffusionXLPipeline (its CLIP "
                                     f"text encoder has 12 layers), not {bad}")


def test_a_flattened_clip_encoder_answers_for_its_old_text_model():
    """SD 1.x's clip_skip path reads text_encoder.text_model.final_layer_norm (transformers 4's layout)."""
    flat, old = SimpleNamespace(final_layer_norm="norm"), SimpleNamespace(text_model=SimpleNamespace())
    pipe = SimpleNamespace(text_encoder=flat, text_encoder_2=old, transformer=None)
    clip_text_model_alias(pipe)
    assert pipe.text_encoder.text_model.final_layer_norm == "norm"
    assert pipe.text_encoder_2.text_model is old.text_model, "an encoder with the old layout is left alone"
