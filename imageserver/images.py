"""Image bytes in and out of the server: decoding uploads, OpenAI masks to Diffusers masks, sizes, PNG encoding."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from imageserver.api import BadRequest


def decode_image(data: bytes, param: str) -> Image.Image:
    """An uploaded image, fully decoded; BadRequest naming `param` if it is not one."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except UnidentifiedImageError:
        raise BadRequest(f"'{param}' is not an image (send a PNG, JPEG or WebP file)", param) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadRequest(f"'{param}' is not a readable image (send a PNG, JPEG or WebP file): {err}", param) from None
    return im


def mask_for_diffusers(mask: Image.Image) -> Image.Image:
    """A grayscale mask, white where to repaint: OpenAI's transparent pixels, or the white of an opaque mask."""
    if "A" in mask.getbands():
        return ImageOps.invert(mask.getchannel("A"))
    return mask.convert("L")


def fit_size(w: int, h: int, max_size: int) -> tuple[int, int]:
    """An input image's size made valid for the pipeline: scaled into max_size, rounded down to multiples of 8."""
    scale = min(1.0, max_size / max(w, h))
    return max(8, int(w * scale) // 8 * 8), max(8, int(h * scale) // 8 * 8)


def encode_png(im: Image.Image) -> bytes:
    """PNG bytes of an image."""
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
