"""Where a request's guidance goes (imageserver.rules.guidance_target, route_guidance), on stand-in pipelines whose
signatures and configs are those of the FLUX, Qwen-Image and Stable Diffusion families: pure logic, no torch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from imageserver.api import BadRequest
from imageserver.rules import guidance_target, route_guidance


class FluxPipeline:  # FLUX.1: guidance embedded when the transformer says so, true CFG beside it
    def __init__(self, guidance_embeds: bool) -> None:
        self.transformer = SimpleNamespace(config=SimpleNamespace(guidance_embeds=guidance_embeds))
        self.config = {}

    def __call__(self, prompt=None, negative_prompt=None, true_cfg_scale: float = 1.0, guidance_scale: float = 3.5):
        ...


class QwenImagePipeline(FluxPipeline):  # its transformer config has no guidance_embeds at all in older releases
    def __init__(self) -> None:
        self.transformer = SimpleNamespace(config=SimpleNamespace())
        self.config = {}


class Flux2KleinPipeline:  # CFG by guidance_scale, unless step-distilled
    def __init__(self, is_distilled: bool) -> None:
        self.config = SimpleNamespace(is_distilled=is_distilled)

    def __call__(self, prompt=None, guidance_scale: float = 4.0):
        ...


class StableDiffusionPipeline:
    config = SimpleNamespace()  # a FrozenDict of its components: no is_distilled

    def __call__(self, prompt=None, negative_prompt=None, guidance_scale: float = 7.5):
        ...


class NoGuidancePipeline:
    def __call__(self, prompt=None):
        ...


@pytest.mark.parametrize(("pipe", "target"), [
    (FluxPipeline(guidance_embeds=True), "guidance_scale"),  # FLUX.1 dev and Kontext: embedded
    (FluxPipeline(guidance_embeds=False), "true_cfg_scale"),  # FLUX.1 schnell: guidance_scale is read by nothing
    (QwenImagePipeline(), "true_cfg_scale"),
    (Flux2KleinPipeline(is_distilled=False), "guidance_scale"),
    (Flux2KleinPipeline(is_distilled=True), None),
    (StableDiffusionPipeline(), "guidance_scale"),
    (NoGuidancePipeline(), None),
])
def test_guidance_target(pipe, target):
    to, why = guidance_target(pipe)
    assert to == target
    assert (why == "") == (target == "guidance_scale")
    assert why == "" or type(pipe).__name__ in why


def test_route_guidance_moves_refuses_or_leaves():
    own = ("guidance_scale", "")
    assert route_guidance({"guidance_scale": 2.0, "true_cfg_scale": 3.0}, own, "P") == {
        "guidance_scale": 2.0, "true_cfg_scale": 3.0}
    cfg = guidance_target(QwenImagePipeline())
    args = {"guidance_scale": 5.0, "strength": 0.5}
    assert route_guidance(args, cfg, "QwenImagePipeline") == {"true_cfg_scale": 5.0, "strength": 0.5}
    assert args == {"guidance_scale": 5.0, "strength": 0.5}, "the caller's dict is left as it was"
    assert route_guidance({"true_cfg_scale": 5.0}, cfg, "QwenImagePipeline") == {"true_cfg_scale": 5.0}
    with pytest.raises(BadRequest) as err:
        route_guidance({"guidance_scale": 5.0, "true_cfg_scale": 4.0}, cfg, "QwenImagePipeline")
    assert err.value.param == "guidance_scale" and "not both" in str(err.value)
    inert = guidance_target(Flux2KleinPipeline(is_distilled=True))
    assert route_guidance({"num_inference_steps": 4}, inert, "Flux2KleinPipeline") == {"num_inference_steps": 4}
    with pytest.raises(BadRequest) as err:
        route_guidance({"guidance_scale": 5.0}, inert, "Flux2KleinPipeline")
    assert err.value.param == "guidance_scale" and "step-distilled" in str(err.value)
