"""The one preprocessing implementation, shared by training and serving.

Text: ``product_text(designation, description)`` turns the two raw Rakuten fields (HTML
markup and entities included) into one normalised, space-separated string; the model's own
``TextVectorization`` layer then maps its tokens to ids, so tokenisation is part of the
saved model. Cleaning is linear in the length of the text, whatever the text.

Image: ``decode_image(data, size)`` turns the bytes of a JPEG/PNG/WebP file into a
``(size, size, 3)`` uint8 array, refusing anything that is not a sane image. It is two steps
that serving runs apart: ``open_image`` reads the header only (format, dimensions, bomb
checks, the JPEG DCT scale) so that ``decode_cost`` can be charged to a request's pixel
budget before any pixel is decoded, then ``decode_image_pixels`` decodes the first frame.
"""
from __future__ import annotations

import html
import io
import re
import unicodedata
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from rakuten_common.errors import ImageError

_TAG = re.compile(r"<[^>]*>")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)

#: Image file formats accepted for the image branch.
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})


def _strip_tags(text: str) -> str:
    """``_TAG.sub(" ", text)`` in linear time.

    Matches end at a ``>``, so nothing after the last ``>`` can be part of one; cutting it off
    first leaves the output unchanged and spares the regex its quadratic case (every ``<`` of
    an unclosed run scanning to the end of the text: ``"<" * 20000`` took 0.2 s per field).
    """
    end = text.rfind(">")
    if end < 0:
        return text
    return _TAG.sub(" ", text[:end + 1]) + text[end + 1:]


def clean_text(text: str | None) -> str:
    """Decode HTML entities, drop tags and punctuation, lower-case; ``None``/NaN give ``""``."""
    if not isinstance(text, str) or not text:
        return ""
    text = html.unescape(_strip_tags(html.unescape(text)))
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub(" ", text).strip()


def product_text(designation: str | None, description: str | None) -> str:
    """The model's text input: cleaned title first (so truncation keeps it), then description."""
    return f"{clean_text(designation)} {clean_text(description)}".strip()


@dataclass
class ImageInfo:
    """What an image file's header says; ``decode_image(..., info=)`` fills it in (data profiles)."""

    format: str = ""
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class ImageLimits:
    """Refusal thresholds applied before any pixel is decoded."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000


def open_image(data: bytes, size: int, limits: ImageLimits = ImageLimits(),
               info: ImageInfo | None = None) -> Image.Image:
    """Read an image file's header (no pixel decoded) and check it against ``limits``.

    JPEGs are set to decode at a reduced DCT scale (``draft``) when that still covers ``size``.
    Raises ``ImageError`` for oversize, unknown, corrupt or bomb images. ``info``, if given,
    receives the file's format and original size as soon as the header is read.
    """
    if len(data) > limits.max_bytes:
        raise ImageError("image_too_large", f"image file is {len(data)} bytes, limit is {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        if info is not None:
            info.format, (info.width, info.height) = image.format or "", image.size
        if image.format not in IMAGE_FORMATS:
            raise ImageError("unsupported_image_format",
                             f"image format {image.format} is not one of {sorted(IMAGE_FORMATS)}")
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageError("image_too_many_pixels",
                             f"image is {width}x{height} pixels, limit is {limits.max_pixels} pixels")
        image.draft("RGB", (size, size))
        return image
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image_too_many_pixels", f"image refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("image_not_decodable", "bytes are not a recognised image file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("image_corrupt", f"image file is corrupt or truncated: {exc}") from None


def decode_cost(image: Image.Image) -> int:
    """Pixels the decoder will produce for ``image`` (after the JPEG DCT scale), doubled for
    16-bit samples: the unit of a request's decoding budget."""
    width, height = image.size
    wide = any("16" in str(tile.args) for tile in image.tile)
    return width * height * (2 if wide else 1)


def decode_image_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Decode the first frame of an ``open_image`` result into a ``(size, size, 3)`` uint8 array."""
    try:
        with image:
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError("image_corrupt", f"image file is corrupt or truncated: {exc}") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_image(data: bytes, size: int, limits: ImageLimits = ImageLimits(),
                 info: ImageInfo | None = None) -> np.ndarray:
    """Decode an image file into a ``(size, size, 3)`` uint8 RGB array (first frame only).

    JPEGs are decoded at a reduced DCT scale (``draft``) when that still covers ``size``,
    which is several times cheaper than a full decode of a 500x500 photo.
    Raises ``ImageError`` for oversize, unknown, corrupt, truncated or bomb images. ``info``: as
    for ``open_image``.
    """
    return decode_image_pixels(open_image(data, size, limits, info), size)
