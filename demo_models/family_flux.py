"""Write one tiny randomly initialised FLUX pipeline (a few MB) of a named family, for trying its code path.

    python -m demo_models.family_flux --family {flux.1-dev,flux.1-kontext,flux.2-klein} OUTDIR

Built from configs as Diffusers' own pipeline tests build theirs, not downloaded, with tokenizers made here:
- flux.1-dev: FluxPipeline. A CLIP text encoder (pooled prompt) and a T5 encoder (the sequence), a 1+1-block
  FluxTransformer2DModel that embeds guidance (guidance_embeds=True: FLUX.1 [dev] is guidance-distilled, so its
  guidance_scale is an input of the model, not a second pass) and a 4-level AutoencoderKL (8x down, 4 latent
  channels, packed 2x2 as FLUX packs them: sizes are multiples of 16, as for the real model).
- flux.1-kontext: FluxKontextPipeline over the same components: it edits by instruction (the input image's latents
  are attended to beside the generated ones), and generates from text alone.
- flux.2-klein: Flux2KleinPipeline, from demo_models.tiny_flux2_klein (several reference images in one edit).
The CLIP tokenizer is tiny_sd's (bytes, no merges); the T5 one is a Unigram over single characters (no
sentencepiece model). Images are NOISE from random weights, but every call takes the pipeline's real path. Seeded,
so the same weights come out every time; a folder that already holds a pipeline is left as it is. Runs in the
diffusers engine environment (torch, diffusers, transformers).
"""

from __future__ import annotations

import string
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from demo_models import tiny_flux2_klein
from demo_models.folders import ConvertError, family_cli, write_pipeline
from demo_models.tiny_sd import write_tokenizer_files

SEED = 0
WIDTH = 32  # the text encoders' width: the transformer's joint attention and pooled projection take it
NOTE = ("Random weights: every image this pipeline makes is noise. It exists to exercise the {family} code path "
        "({pipeline}) cheaply; built by demo_models.family_flux.\n")


def clip_tokenizer() -> Any:
    """tiny_sd's CLIP tokenizer: one token per byte (with and without the end-of-word mark), bos 0, pad 1, eos 2."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)


def t5_tokenizer() -> Any:
    """A T5 tokenizer (Unigram, as T5's sentencepiece model is) over single printable characters, each also with the
    word-start mark; pad 0, eos 1, unk 2 as in T5, no sentinel tokens."""
    from transformers import T5TokenizerFast

    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def flux1_components() -> dict[str, Any]:
    """The modules of a FLUX.1 pipeline (dev and Kontext share them), each seeded."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, pad_token_id=1, eos_token_id=2, hidden_size=WIDTH, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, layer_norm_eps=1e-5, vocab_size=len(tokenizer),
        max_position_embeddings=77, projection_dim=WIDTH))
    torch.manual_seed(SEED)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=WIDTH, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    torch.manual_seed(SEED)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=WIDTH,
                                         pooled_projection_dim=WIDTH, axes_dims_rope=[4, 4, 8], guidance_embeds=True)
    torch.manual_seed(SEED)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                        layers_per_block=1, latent_channels=4, norm_num_groups=2, sample_size=64,
                        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    return {"scheduler": FlowMatchEulerDiscreteScheduler(), "vae": vae, "text_encoder": text_encoder,
            "tokenizer": tokenizer, "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2,
            "transformer": transformer}


def build_flux1(pipeline: str, family: str) -> Callable[[Path], None]:
    """The build of a FLUX.1 family whose pipeline class is `pipeline`."""
    def build(outdir: Path) -> None:
        import diffusers

        pipe = getattr(diffusers, pipeline)(**flux1_components())
        pipe.save_pretrained(outdir)
        (outdir / "README.md").write_text(NOTE.format(family=family, pipeline=pipeline))
    return build


def build_flux2_klein(outdir: Path) -> None:
    """tiny_flux2_klein's pipeline, with this module's note."""
    tiny_flux2_klein.build(outdir)
    (outdir / "README.md").write_text(NOTE.format(family="flux.2-klein", pipeline="Flux2KleinPipeline"))


FAMILIES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "flux.1-dev": ("FluxPipeline", build_flux1("FluxPipeline", "flux.1-dev")),
    "flux.1-kontext": ("FluxKontextPipeline", build_flux1("FluxKontextPipeline", "flux.1-kontext")),
    "flux.2-klein": ("Flux2KleinPipeline", build_flux2_klein),
}


def convert(family: str, out: Path) -> str:
    """Write `family`'s pipeline to `out` unless it is there; what was done. ConvertError for an unknown family."""
    if family not in FAMILIES:
        raise ConvertError(f"unknown family {family!r} (valid: {', '.join(FAMILIES)})")
    pipeline, build = FAMILIES[family]
    return write_pipeline(out, build, f"tiny random {pipeline} ({family})")


def main(argv: list[str] | None = None) -> int:
    """`--family NAME OUTDIR`: print what was done, or the error and exit 1."""
    return family_cli("family_flux", FAMILIES, convert, argv)


if __name__ == "__main__":
    sys.exit(main())
