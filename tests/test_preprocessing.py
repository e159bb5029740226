"""The shared preprocessing: text cleaning and image decoding with its refusals."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rakuten_common.preprocessing import (
    ImageError,
    ImageLimits,
    clean_text,
    decode_image,
    product_text,
)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("raw, expected", [
    ("Piscine <b>Intex</b>&nbsp;ronde", "piscine intex ronde"),
    ("Qualit&eacute; sup&eacute;rieure<br />Garantie 2 ans", "qualité supérieure garantie 2 ans"),
    ("<p>Lot de 3 livres &amp;amp; BD</p>", "lot de 3 livres bd"),
    ("  Ｆｉｇｕｒｉｎｅ  POP!  ", "figurine pop"),
    ("", ""), (None, ""), (float("nan"), ""),
])
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected


def test_product_text_puts_the_title_first_and_tolerates_an_empty_description():
    assert product_text("Chaise de jardin", "<p>R&eacute;sine</p>") == "chaise de jardin résine"
    assert product_text("Chaise de jardin", "") == "chaise de jardin"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_decode_image_gives_uint8_rgb_of_the_model_size(fmt):
    image = Image.new("RGB", (500, 500), (10, 200, 30))
    array = decode_image(encode(image, fmt), 64)
    assert array.shape == (64, 64, 3) and array.dtype == np.uint8
    assert abs(int(array[32, 32, 1]) - 200) < 8


def test_decode_image_handles_grey_alpha_and_non_square():
    assert decode_image(encode(Image.new("LA", (300, 120)), "PNG"), 32).shape == (32, 32, 3)


@pytest.mark.parametrize("data, reason", [
    (b"definitely not an image", "image_not_decodable"),
    (encode(Image.new("RGB", (500, 500)), "JPEG")[:600], "image_corrupt"),
    (encode(Image.new("RGB", (40, 40)), "GIF"), "unsupported_image_format"),
    (encode(Image.new("1", (12000, 12000)), "PNG"), "image_too_many_pixels"),
])
def test_decode_image_refusals(data, reason):
    with pytest.raises(ImageError) as error:
        decode_image(data, 64, ImageLimits(max_pixels=100_000_000))
    assert error.value.reason == reason


def test_decode_image_size_limits():
    data = encode(Image.new("RGB", (400, 400)), "PNG")
    with pytest.raises(ImageError, match="limit is 100 bytes"):
        decode_image(data, 64, ImageLimits(max_bytes=100))
    with pytest.raises(ImageError, match="limit is 1000 pixels"):
        decode_image(data, 64, ImageLimits(max_pixels=1000))
