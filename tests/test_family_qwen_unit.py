"""Pure logic of the Qwen-Image family's parameters: where a request's guidance_scale goes (rules.guidance_target;
route_guidance is tested in test_family_flux_unit.py), and the one line for a missing torchvision."""

from __future__ import annotations

from types import SimpleNamespace

from imageserver.pipelines import missing_library
from imageserver.rules import guidance_target


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
    assert guidance_target(QwenLike())[0] == "true_cfg_scale"  # its guidance_scale is inert
    assert guidance_target(QwenLike(embeds=None))[0] == "true_cfg_scale"
    assert guidance_target(QwenLike(embeds=True))[0] == "guidance_scale"  # guidance-distilled (FLUX.1-dev)
    assert guidance_target(SDLike())[0] == "guidance_scale"
    assert guidance_target(KleinLike())[0] is None


def test_a_missing_torchvision_is_one_line_naming_the_fix():
    err = ImportError("\nQwen2VLVideoProcessor requires the Torchvision library but it was not found in your "
                      "environment. Check out the instructions on the\ninstallation page: https://pytorch.org/")
    line = missing_library(err)
    assert "\n" not in line and line.startswith("Qwen2VLVideoProcessor needs torchvision")
    assert "hub engines setup diffusers --device cuda" in line
    assert "missing from the engine environment: No module named 'x'" in missing_library(ImportError(
        "No module named 'x'"))
