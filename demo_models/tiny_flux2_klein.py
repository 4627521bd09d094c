"""Write a tiny randomly initialised FLUX.2 [klein] pipeline (Flux2KleinPipeline, about 2 MB) for tests.

    python -m demo_models.tiny_flux2_klein OUTDIR

FLUX.2 takes several reference images in one edit (its `image` is a list), so this is the project's tiny
multi-image edit model. It is built from configs, not downloaded: a 27-layer Qwen3 text encoder 16 wide (the pipeline
reads its layers 9, 18 and 27), a 1+1-block FLUX.2 transformer, a small FLUX.2 VAE (4 latent channels, 8x down), and a
byte-level tokenizer with a ChatML template. Its images are NOISE from random weights, but an edit with several input
images takes the pipeline's real path (every reference image is VAE-encoded and attended to). Seeded, so the same
weights come out every time; a folder that already holds a pipeline is left as it is. Runs in the diffusers engine
environment (torch, diffusers, transformers).

Why not Qwen-Image-Edit-2509 (QwenImageEditPlusPipeline): its Qwen2VLProcessor cannot be built or loaded without a
video processor, and transformers' video processors need torchvision, which the CPU environment does not have.
"""

from __future__ import annotations

import sys
from pathlib import Path

from demo_models.folders import byte_level_bpe, cli, write_pipeline

SEED = 0
HIDDEN = 16  # the text encoder's width; the transformer attends to 3 of its layers side by side
LAYERS = 27  # the pipeline reads hidden states 9, 18 and 27
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
NOTE = ("Random weights: every image this pipeline makes is noise. It exists to exercise multi-image edits "
        "(Flux2KleinPipeline) cheaply.\n")


def make_tokenizer():
    """A byte-level tokenizer (one token per byte, no merges) with the ChatML special tokens and template."""
    from transformers import Qwen2TokenizerFast

    return Qwen2TokenizerFast(tokenizer_object=byte_level_bpe(SPECIALS),
                              eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, model_max_length=512, chat_template=CHAT_TEMPLATE)


def build(outdir: Path) -> None:
    """Build the pipeline with fixed seeds and save it to `outdir`."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(SEED)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        hidden_size=HIDDEN, intermediate_size=16, num_hidden_layers=LAYERS, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer), max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))
    torch.manual_seed(SEED)
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * HIDDEN,
                                          timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
                                          guidance_embeds=False)
    torch.manual_seed(SEED)
    vae = AutoencoderKLFlux2(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                             layers_per_block=1, latent_channels=4, norm_num_groups=2, sample_size=64,
                             use_quant_conv=False, use_post_quant_conv=False)
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer)
    pipe.save_pretrained(outdir)
    (outdir / "README.md").write_text(NOTE)


def main(argv: list[str] | None = None) -> int:
    """Write the pipeline to OUTDIR unless it is already there."""
    return cli("tiny_flux2_klein", lambda out: write_pipeline(out, build, "tiny random Flux2KleinPipeline"),
               "folder to write (skipped if it already holds model_index.json)", argv)


if __name__ == "__main__":
    sys.exit(main())
