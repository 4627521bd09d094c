"""Write a tiny randomly initialised Stable Diffusion pipeline (about 8 MB) for demos and tests.

    python -m demo_models.tiny_sd OUTDIR

It is built from configs, not downloaded: its images are NOISE from random weights, but every code path (loading
with from_pretrained, text-to-image, image-to-image, inpainting) is the one real checkpoints take. Seeded, so the
same weights come out every time; a folder that already holds a pipeline is left as it is. Runs in the diffusers
engine environment (torch, diffusers, transformers).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from demo_models.folders import byte_unicode, cli, write_pipeline

SEED = 0
NOTE = "Random weights: every image this pipeline makes is noise. It exists to exercise the code paths cheaply.\n"


def write_tokenizer_files(folder: Path) -> int:
    """A CLIP vocabulary over single bytes (with and without the end-of-word mark) and no merges; its size."""
    chars = byte_unicode()
    tokens = ["<|startoftext|>", "!", "<|endoftext|>"]  # bos 0, pad 1, eos 2 (as in the text encoder config)
    tokens += [c for c in chars if c not in tokens] + [c + "</w>" for c in chars]
    vocab = {t: i for i, t in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def build(outdir: Path) -> None:
    """Build the pipeline with fixed seeds and save it to `outdir`."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=77)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, pad_token_id=1, eos_token_id=2, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=5, layer_norm_eps=1e-5, vocab_size=vocab_size, max_position_embeddings=77,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(outdir)
    (outdir / "README.md").write_text(NOTE)


def main(argv: list[str] | None = None) -> int:
    """Write the pipeline to OUTDIR unless it is already there."""
    return cli("tiny_sd", lambda out: write_pipeline(out, build, "tiny random Stable Diffusion pipeline"),
               "folder to write (skipped if it already holds model_index.json)", argv)


if __name__ == "__main__":
    sys.exit(main())
