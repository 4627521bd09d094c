"""Write one tiny randomly initialised Stable Diffusion family pipeline (sd1.5, sdxl or sd3.5) for tests.

    python -m demo_models.family_sd --family NAME OUTDIR

Each is built from configs the way Diffusers' own fast tests build theirs, not downloaded: its images are NOISE from
random weights, but loading it with from_pretrained and calling it (text-to-image, and the image-to-image and
inpainting pipelines Diffusers derives from it) takes the code path of the real checkpoints of its family:

- sd1.5: StableDiffusionPipeline (one CLIP text encoder, a UNet; demo_models.tiny_sd builds it);
- sdxl: StableDiffusionXLPipeline (two CLIP text encoders, the second with a projection whose pooled output and the
  size/crop "time ids" condition the UNet; a VAE that scales by 8, as SDXL's);
- sd3.5: StableDiffusion3Pipeline (an SD3 transformer in SD3.5's layout: RMS-normed queries and keys, a dual-attention
  first layer as SD3.5 Medium's, 2x2 patches; two CLIP encoders with projections and a T5 encoder; the flow-matching
  Euler scheduler with SD3's shift; a 16-channel VAE that scales by 8 and shifts its latents).

Tokenizers are made here: CLIP's over single bytes (demo_models.tiny_sd), T5's a Unigram over single characters.
Seeded, so the same weights come out every time; a folder that already holds a pipeline is left as it is. A few MB
each. Runs in the diffusers engine environment (torch, diffusers, transformers).
"""

from __future__ import annotations

import string
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from demo_models import tiny_sd
from demo_models.folders import ConvertError, family_cli, write_pipeline

SEED = 0
CLIP_WIDTH = 32  # each CLIP text encoder's hidden size and projection
T5_WIDTH = 64  # SD3 pads the two CLIPs' features side by side (2 x 32) to T5's width
NOTE = ("Random weights: every image this pipeline makes is noise. It exists to exercise the code paths of the "
        "{family} family ({pipeline}) cheaply: text-to-image, image-to-image and inpainting.\n")


def clip_tokenizer() -> Any:
    """CLIP's tokenizer over single bytes (tiny_sd's vocabulary), 77 tokens as every CLIP of the family reads."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tiny_sd.write_tokenizer_files(Path(tmp))
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)


def t5_tokenizer() -> Any:
    """A T5 tokenizer (SentencePiece-style Unigram) over single characters: pad 0, eos 1, unk 2 as T5's; no
    sentinel tokens (only span-corruption training uses them)."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + [c for c in string.printable if not c.isspace()]
    vocab = [(p, 0.0 if i < 3 else -1.0 - i / 1000) for i, p in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def clip_config(vocab_size: int, projection: bool) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, pad_token_id=1, eos_token_id=2, hidden_size=CLIP_WIDTH, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=5, layer_norm_eps=1e-5, vocab_size=vocab_size,
                          max_position_embeddings=77, hidden_act="gelu",
                          **({"projection_dim": CLIP_WIDTH} if projection else {}))


def vae_by_8(latent_channels: int, **extra: Any) -> Any:
    """A small AutoencoderKL with four blocks: it scales by 8, as the real ones of SDXL and SD3 do."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64,
                         **extra)


def build_sdxl(outdir: Path) -> None:
    """StableDiffusionXLPipeline: two CLIP encoders (the second with a projection), a UNet conditioned on the
    pooled text and the six size/crop numbers (6 x 8 time embedding + 32 pooled = 80)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=2 * CLIP_WIDTH, norm_num_groups=8)
    torch.manual_seed(SEED)
    vae = vae_by_8(4, scaling_factor=0.13025, force_upcast=True)
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(clip_config(len(tokenizer), projection=False))
    torch.manual_seed(SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(len(tokenizer_2), projection=True))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(outdir)


def build_sd35(outdir: Path) -> None:
    """StableDiffusion3Pipeline in SD3.5's layout: the transformer's queries and keys RMS-normed (qk_norm), its first
    layer with SD3.5 Medium's second (dual) attention; pooled text = both CLIP projections side by side (64)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=T5_WIDTH, caption_projection_dim=32,
        pooled_projection_dim=2 * CLIP_WIDTH, pos_embed_max_size=32, dual_attention_layers=(0,), qk_norm="rms_norm")
    torch.manual_seed(SEED)
    vae = vae_by_8(16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModelWithProjection(clip_config(len(tokenizer), projection=True))
    torch.manual_seed(SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(len(tokenizer_2), projection=True))
    torch.manual_seed(SEED)
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_3), d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                    text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    pipe.save_pretrained(outdir)


# family -> (its pipeline class, the builder)
FAMILIES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "sd1.5": ("StableDiffusionPipeline", tiny_sd.build),
    "sdxl": ("StableDiffusionXLPipeline", build_sdxl),
    "sd3.5": ("StableDiffusion3Pipeline", build_sd35),
}


def convert(family: str, out: Path) -> str:
    """Build `family` into `out` unless it already holds a pipeline."""
    if family not in FAMILIES:
        raise ConvertError(f"unknown family {family!r} (this module builds: {', '.join(FAMILIES)})")
    pipeline, build = FAMILIES[family]

    def make(folder: Path) -> None:
        build(folder)
        (folder / "README.md").write_text(NOTE.format(family=family, pipeline=pipeline))

    return write_pipeline(out, make, f"tiny random {pipeline} ({family})")


def main(argv: list[str] | None = None) -> int:
    """`--family NAME OUTDIR`: print what was done, or the error and exit 1."""
    return family_cli("family_sd", FAMILIES, convert, argv)


if __name__ == "__main__":
    sys.exit(main())
