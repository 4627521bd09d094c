"""Write a tiny randomly initialised Qwen-Image family pipeline (a few MB) for tests: Qwen-Image (text to image),
Qwen-Image-Edit (one input image, edited by instruction) or Qwen-Image-Edit-Plus (several input images).

    python -m demo_models.family_qwen --family qwen-image|qwen-image-edit|qwen-image-edit-plus OUTDIR

Built from configs as Diffusers' own tests build them, not downloaded: a 2-layer QwenImageTransformer2DModel, a small
AutoencoderKLQwenImage (4 latent channels, 8x down), a 2-layer Qwen2.5-VL text encoder 16 wide with a 2-block vision
tower, and a byte-level tokenizer (one token per byte, no merges) whose special tokens sit at Qwen's real ids
(`<|vision_start|>` 151652, `<|image_pad|>` 151655: the text encoder finds the image by them), so the vocabulary is
Qwen's size and the embedding table most of the weight. The pipelines drop the first 34 (Qwen-Image) or 64 (the edit
models) tokens of their prompt template; in bytes the template is far longer, so what is dropped is template only.

The edit models also need a Qwen2VLProcessor (the text encoder sees the input image). transformers builds and loads
one only with a video processor, and its video processors need torchvision, which the CPU engine environment lacks:
so the processor's files (preprocessor_config.json, video_preprocessor_config.json, processor_config.json, the
tokenizer and chat template) are written as plain JSON that Qwen2VLProcessor.from_pretrained reads, without ever
instantiating it here. Its images are resized to at most 56x56 pixels (16 vision patches, 4 image tokens).

Images are NOISE from random weights. Seeded, so the same weights come out every time; a folder that already holds a
pipeline is left as it is. Runs in the diffusers engine environment (torch, diffusers, transformers).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from demo_models.folders import byte_level_bpe, family_cli, write_pipeline

SEED = 0
HIDDEN = 16  # the text encoder's width, which is the transformer's joint attention width
# Qwen2's special tokens in the order of their real ids, from 151643 (the text encoder keys on the vision ones)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
            "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
FIRST_SPECIAL = 151643
VOCAB = 151680  # past the last special, a multiple of 16
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% if m['content'] is string %}"
                 "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
                 "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% elif c['type'] == 'text' %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# The vision tower's geometry (Qwen2.5-VL's own: 14 px patches, 2 frames, 2x2 merged) and a tiny image budget
VISION = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "min_pixels": 56 * 56, "max_pixels": 56 * 56,
          "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
FAMILIES = {"qwen-image": "QwenImagePipeline", "qwen-image-edit": "QwenImageEditPipeline",
            "qwen-image-edit-plus": "QwenImageEditPlusPipeline"}
NOTE = ("Random weights: every image this pipeline makes is noise. It exists to exercise the {cls} code path "
        "(python -m demo_models.family_qwen --family {family}) cheaply.\n")


def make_tokenizer():
    """A byte-level Qwen2 tokenizer: bytes at ids 0-255, Qwen's special tokens at their real ids (151643 on)."""
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    tok = byte_level_bpe([])
    vocab = tok.get_vocab() | {s: FIRST_SPECIAL + i for i, s in enumerate(SPECIALS)}
    from tokenizers import Tokenizer, models

    inner = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    inner.pre_tokenizer, inner.decoder = tok.pre_tokenizer, tok.decoder
    inner.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return Qwen2TokenizerFast(tokenizer_object=inner, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, model_max_length=32768, chat_template=CHAT_TEMPLATE)


def write_processor(folder: Path, tokenizer) -> None:
    """The files Qwen2VLProcessor.from_pretrained reads, written as JSON (building one needs torchvision)."""
    tokenizer.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, **VISION}, indent=2) + "\n")
    (folder / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "Qwen2VLVideoProcessor", "processor_class": "Qwen2VLProcessor",
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "min_frames": 4, "max_frames": 8, **VISION}, indent=2) + "\n")
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}) + "\n")
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def build(outdir: Path, family: str) -> None:
    """Build the pipeline of `family` with fixed seeds and save it to `outdir`."""
    import diffusers
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = make_tokenizer()
    torch.manual_seed(SEED)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=3, joint_attention_dim=HIDDEN,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    torch.manual_seed(SEED)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    torch.manual_seed(SEED)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config={"hidden_size": HIDDEN, "intermediate_size": 16, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": VOCAB,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e6}},
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": HIDDEN, "patch_size": VISION["patch_size"],
                       "temporal_patch_size": VISION["temporal_patch_size"],
                       "spatial_merge_size": VISION["merge_size"]},
        vocab_size=VOCAB, tie_word_embeddings=True,
        vision_start_token_id=151652, vision_end_token_id=151653, vision_token_id=151654, image_token_id=151655,
        video_token_id=151656)).eval().to(torch.bfloat16)  # half the size on disk; loading casts it back
    parts = {"scheduler": FlowMatchEulerDiscreteScheduler(), "vae": vae, "text_encoder": text_encoder,
             "tokenizer": tokenizer, "transformer": transformer}
    cls = getattr(diffusers, FAMILIES[family])
    edit = family != "qwen-image"
    pipe = cls(**parts, processor=None) if edit else cls(**parts)
    pipe.save_pretrained(outdir)
    if edit:  # the processor, which this environment cannot build, joins the saved pipeline as files
        write_processor(outdir / "processor", tokenizer)
        index = json.loads((outdir / "model_index.json").read_text())
        index["processor"] = ["transformers", "Qwen2VLProcessor"]
        (outdir / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (outdir / "README.md").write_text(NOTE.format(cls=cls.__name__, family=family))


def main(argv: list[str] | None = None) -> int:
    """Write the pipeline of --family to OUTDIR unless it is already there."""
    return family_cli("family_qwen", FAMILIES, lambda family, out: write_pipeline(
        out, lambda d: build(d, family), f"tiny random {FAMILIES[family]}"), argv)


if __name__ == "__main__":
    sys.exit(main())
