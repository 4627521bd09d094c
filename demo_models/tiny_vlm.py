"""Write a tiny randomly initialised vision-language model (Idefics3 layout, about 0.4 MB) for demos and tests.

    python -m demo_models.tiny_vlm OUTDIR

It is built from configs, not downloaded: a 2-layer SigLIP-style vision tower (32 px tiles, 8 px patches), the
pixel-shuffle connector and a 2-layer Llama, with a byte-level tokenizer and a ChatML chat template. An image is
resized to at most 64 px, cut into up to 2x2 tiles of 32 px plus one global view, 4 image tokens each. Its answers
are GIBBERISH from random weights, but an OpenAI chat request with an `image_url` part takes the real path through
vLLM (image decoding, preprocessing and tiling, placeholder expansion, vision tower, language model). Seeded, so the
same weights come out every time. Idempotent: a finished folder holds a marker file and is left alone; work happens
in a temporary folder renamed into place at the end. Runs in the vllm engine environment (torch, transformers, PIL).

Why Idefics3 and not LLaVA: vLLM's llava module imports its pixtral module, which imports a transformers image
processor that needs torchvision, which the CPU engine environment does not have; Idefics3 (the SmolVLM layout) and
its PIL image processor need none. vLLM accepts several images per request by default; serve with
`--limit-mm-per-prompt '{"image": 1}'` to cap it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from demo_models.folders import MARKER, ConvertError, byte_level_bpe, check_out, cli, make_into

SEED = 0
TILE = 32  # px: the vision tower's image size; larger images are cut into tiles of this size
MAX_SIDE = 64  # px: images are first resized so that their longer side is this
PATCH = 8  # px
SCALE = 2  # pixel shuffle: SCALE x SCALE patch features become one token
IMAGE_SEQ_LEN = (TILE // PATCH) ** 2 // SCALE**2  # tokens per tile
GRID = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]  # tile tags, as in Idefics3/SmolVLM
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<fake_token_around_image>", "<global-img>",
            "<end_of_utterance>", *GRID]  # ids 256.. (after the 256 byte tokens)
NOTE = "Random weights: every answer this model gives is gibberish. It exists to exercise image chat cheaply.\n"

# ChatML; a message's content may be a string or a list of parts ({"type": "text"} / {"type": "image"}): each
# image part becomes one <image> token, which the processor expands into tile tags and IMAGE_SEQ_LEN tokens a tile.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer():
    """A byte-level tokenizer (one token per byte, no merges) with the ChatML and image special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=byte_level_bpe(SPECIALS),
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", chat_template=CHAT_TEMPLATE, model_max_length=2048)


def build(outdir: Path) -> None:
    """Build the model, its processor and tokenizer with fixed seeds and save them to `outdir`."""
    try:
        import torch
        from transformers import (
            GenerationConfig,
            Idefics3Config,
            Idefics3ForConditionalGeneration,
            Idefics3ImageProcessorPil,
            Idefics3Processor,
            Idefics3VisionConfig,
            LlamaConfig,
        )
    except ImportError as err:
        raise ConvertError(f"{err}: run this in the vllm engine environment (`hub engines setup vllm`)") from err

    tokenizer = make_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    vision = Idefics3VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=TILE, patch_size=PATCH)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=32,  # vLLM CPU attention: head >= 32
                       max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=ids["<|im_start|>"],
                       eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config = Idefics3Config(vision_config=vision, text_config=text, image_token_id=ids["<image>"], scale_factor=SCALE,
                            pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True)
    torch.manual_seed(SEED)
    model = Idefics3ForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
                                               pad_token_id=text.pad_token_id)
    model.save_pretrained(outdir, safe_serialization=True)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": MAX_SIDE}, max_image_size={"longest_edge": TILE},
                                                do_image_splitting=True)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN,
                                  chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(outdir)
    (outdir / "README.md").write_text(NOTE)


def convert(out: Path) -> str:
    """Build the model into `out` unless it is already there; returns what happened."""
    if check_out(out, out / MARKER):
        return f"{out}: already there, left as it is"
    make_into(out, build, {"source": f"random (seed {SEED})", "dtype": "bfloat16"})
    return f"{out}: tiny random vision-language model written (its answers are gibberish)"


def main(argv: list[str] | None = None) -> int:
    """Write the model to OUTDIR unless it is already there."""
    return cli("tiny_vlm", convert, f"folder to write (skipped if it already holds {MARKER})", argv)


if __name__ == "__main__":
    sys.exit(main())
