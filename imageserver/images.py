"""Image bytes in and out of the server: decoding uploads (size checked from the header first), OpenAI masks to
Diffusers masks, sizes, and encoding to PNG, JPEG or WebP."""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from imageserver.api import BadRequest

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def decode_image(data: bytes, param: str, max_pixels: int) -> Image.Image:
    """An uploaded image, fully decoded; BadRequest naming `param` if it is not one, or if its header announces more
    than `max_pixels` pixels (checked before any pixel is decoded)."""
    try:
        im = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except UnidentifiedImageError:
        raise BadRequest(f"'{param}' is not an image (send a PNG, JPEG or WebP file)", param) from None
    except Image.DecompressionBombError:
        im = None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadRequest(f"'{param}' is not a readable image (send a PNG, JPEG or WebP file): {err}", param) from None
    if im is None or im.size[0] * im.size[1] > max_pixels:
        size = f"{im.size[0]}x{im.size[1]}" if im is not None else "far too large"
        raise BadRequest(f"'{param}' is {size}: this model takes images of at most {max_pixels} pixels "
                         "(max_input_pixels); send a smaller image", param)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadRequest(f"'{param}' is not a readable image (send a PNG, JPEG or WebP file): {err}", param) from None
    return im


def mask_for_diffusers(mask: Image.Image) -> Image.Image:
    """A grayscale mask, white where to repaint: OpenAI's transparent pixels, or the white of an opaque mask."""
    if "A" in mask.getbands():
        return ImageOps.invert(mask.getchannel("A"))
    return mask.convert("L")


def fit_size(w: int, h: int, max_size: int, multiple: int = 8) -> tuple[int, int]:
    """An input image's size made valid for the pipeline: scaled into max_size, rounded down to multiples of
    `multiple` (the pipeline's rule)."""
    scale = min(1.0, max_size / max(w, h))
    m = max(multiple, 1)
    return max(m, int(w * scale) // m * m), max(m, int(h * scale) // m * m)


def encode_image(im: Image.Image, fmt: str = "png", compression: int | None = None, fast: bool = False) -> bytes:
    """The bytes of an image as png, jpeg or webp; `compression` (0-100, OpenAI's output_compression: 100 is the best
    quality, the default) sets JPEG and WebP quality; PNG is lossless and ignores it. `fast`: a quick PNG (previews)."""
    buf = io.BytesIO()
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=1 if fast else 6)
    else:
        quality = 100 if compression is None else compression
        im.save(buf, format=_PIL_FORMATS[fmt], quality=quality)
    return buf.getvalue()


def encode_png(im: Image.Image) -> bytes:
    """PNG bytes of an image."""
    return encode_image(im, "png")
