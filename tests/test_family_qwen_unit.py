"""Pure logic of the Qwen-Image family's parameters: where a request's guidance_scale goes (rules.guidance_target,
map_guidance), the negative prompt that lets true CFG run, and the one line for a missing torchvision."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from imageserver.api import BadRequest
from imageserver.pipelines import missing_library
from imageserver.rules import cfg_negative_prompt, guidance_target, map_guidance


class QwenLike:
    def __init__(self, embeds: bool | None = False) -> None:
        self.transformer = SimpleNamespace(config=SimpleNamespace(guidance_embeds=embeds))

    def __call__(self, prompt=None, negative_prompt=None, true_cfg_scale: float = 4.0,
                 guidance_scale: float | None = None, num_inference_steps: int = 50): ...


class SDLike:
    def __call__(self, prompt=None, guidance_scale: float = 7.5): ...


class KleinLike:
    def __call__(self, prompt=None, num_inference_steps: int = 4): ...


def test_guidance_goes_where_it_acts():
    assert guidance_target(QwenLike()) == "true_cfg_scale"  # its guidance_scale is inert
    assert guidance_target(QwenLike(embeds=None)) == "true_cfg_scale"
    assert guidance_target(QwenLike(embeds=True)) == "guidance_scale"  # guidance-distilled (FLUX.1-dev)
    assert guidance_target(SDLike()) == "guidance_scale"
    assert guidance_target(KleinLike()) is None


def test_map_guidance_moves_guidance_scale_to_true_cfg_scale():
    assert map_guidance({"guidance_scale": 3.0, "seed": 1}, "true_cfg_scale", "Q") == {"true_cfg_scale": 3.0,
                                                                                       "seed": 1}
    assert map_guidance({"guidance_scale": 3.0}, "guidance_scale", "S") == {"guidance_scale": 3.0}
    assert map_guidance({"true_cfg_scale": 2.0}, "true_cfg_scale", "Q") == {"true_cfg_scale": 2.0}
    with pytest.raises(BadRequest, match="not both") as err:
        map_guidance({"guidance_scale": 3.0, "true_cfg_scale": 2.0}, "true_cfg_scale", "Q")
    assert err.value.param == "true_cfg_scale"


def test_true_cfg_gets_a_negative_prompt_only_where_it_runs():
    assert cfg_negative_prompt("true_cfg_scale", 4.0, None) == " "
    assert cfg_negative_prompt("true_cfg_scale", 4.0, "blurry") == "blurry"
    assert cfg_negative_prompt("true_cfg_scale", 1.0, None) is None
    assert cfg_negative_prompt("true_cfg_scale", None, None) is None
    assert cfg_negative_prompt("guidance_scale", 7.5, None) is None


def test_a_missing_torchvision_is_one_line_naming_the_fix():
    err = ImportError("\nQwen2VLVideoProcessor requires the Torchvision library but it was not found in your "
                      "environment. Check out the instructions on the\ninstallation page: https://pytorch.org/")
    line = missing_library(err)
    assert "\n" not in line and line.startswith("Qwen2VLVideoProcessor needs torchvision")
    assert "hub engines setup diffusers --device cuda" in line
    assert "missing from the engine environment: No module named 'x'" in missing_library(ImportError(
        "No module named 'x'"))
