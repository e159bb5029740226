"""The one preprocessing implementation, shared by training and serving.

Text: ``product_text(designation, description)`` turns the two raw Rakuten fields (HTML
markup and entities included) into one normalised, space-separated string; the model's own
``TextVectorization`` layer then maps its tokens to ids, so tokenisation is part of the
saved model. Image: ``decode_image(data, size)`` turns the bytes of a JPEG/PNG/WebP file
into a ``(size, size, 3)`` uint8 array, refusing anything that is not a sane image.
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

_TAG = re.compile(r"<[^>]*>")
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)

#: Image file formats accepted for the image branch.
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})


def clean_text(text: str | None) -> str:
    """Decode HTML entities, drop tags and punctuation, lower-case; ``None``/NaN give ``""``."""
    if not isinstance(text, str) or not text:
        return ""
    text = html.unescape(_TAG.sub(" ", html.unescape(text)))
    text = unicodedata.normalize("NFKC", text).lower()
    return _NON_WORD.sub(" ", text).strip()


def product_text(designation: str | None, description: str | None) -> str:
    """The model's text input: cleaned title first (so truncation keeps it), then description."""
    return f"{clean_text(designation)} {clean_text(description)}".strip()


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is a short machine-readable label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


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


def decode_image(data: bytes, size: int, limits: ImageLimits = ImageLimits(),
                 info: ImageInfo | None = None) -> np.ndarray:
    """Decode an image file into a ``(size, size, 3)`` uint8 RGB array.

    JPEGs are decoded at a reduced DCT scale (``draft``) when that still covers ``size``,
    which is several times cheaper than a full decode of a 500x500 photo.
    Raises ``ImageError`` for oversize, unknown, corrupt, truncated or bomb images. ``info``, if
    given, receives the file's format and original size as soon as the header is read.
    """
    if len(data) > limits.max_bytes:
        raise ImageError("image_too_large", f"image file is {len(data)} bytes, limit is {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if info is not None:
                    info.format, (info.width, info.height) = image.format or "", image.size
                if image.format not in IMAGE_FORMATS:
                    raise ImageError(
                        "unsupported_image_format",
                        f"image format {image.format} is not one of {sorted(IMAGE_FORMATS)}",
                    )
                width, height = image.size
                if width * height > limits.max_pixels:
                    raise ImageError(
                        "image_too_many_pixels",
                        f"image is {width}x{height} pixels, limit is {limits.max_pixels} pixels",
                    )
                image.draft("RGB", (size, size))
                rgb = image.convert("RGB")
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("image_too_many_pixels", f"image refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("image_not_decodable", "bytes are not a recognised image file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("image_corrupt", f"image file is corrupt or truncated: {exc}") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
