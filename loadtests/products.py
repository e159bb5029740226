"""Realistic products to send, built once and encoded once.

A product is a French title, a description (HTML, empty about a third of the time) and a
real-size 500x500 JPEG, as in the Rakuten set. They are either generated
(``rakuten_common.synthetic``) or read from a dataset folder in the Rakuten layout
(``rakuten_common.data_layout``). *Shifted* products (``shifted_products``) are the same
generator bent away from the training data, to show drift monitoring at work: one product
family only, English texts, grayscale or tiny images (``SHIFTS``, any combination). Every request body is
encoded up front, in both forms (base64 JSON and the binary tensor data extension), so that
the load generator spends its CPU on sending, not on encoding.

Used by ``loadtests/locustfile.py`` and ``benchmarks/serving_benchmark.py``; the V2 contract
itself comes from ``rakuten_common.v2_client``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rakuten_common.data_layout import TEST, TRAIN
from rakuten_common.labels import PRDTYPECODES, TRAIN_COUNTS
from rakuten_common.synthetic import CLASS_INFO, FAMILIES, make_image, make_text
from rakuten_common.v2_client import Product, binary_infer_request, infer_request

PAYLOADS = ("base64", "binary")
JSON_HEADERS = {"Content-Type": "application/json"}
_CODES = frozenset(PRDTYPECODES)


def jpeg_bytes(image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def generate_products(count: int, seed: int = 0, image_size: int = 500) -> list[Product]:
    """``count`` synthetic products, classes drawn with the real set's imbalance."""
    rng = np.random.default_rng(seed)
    weights = np.array([TRAIN_COUNTS[code] for code in PRDTYPECODES], dtype=float)
    codes = rng.choice(PRDTYPECODES, size=count, p=weights / weights.sum())
    products = []
    for code in codes:
        designation, description = make_text(rng, int(code))
        products.append(Product(designation, description, jpeg_bytes(make_image(rng, int(code), image_size))))
    return products


#: Ways shifted traffic departs from the training data (``--shift``).
SHIFTS = ("family", "english", "grayscale", "tiny")
SHIFTED_FAMILY = "jardin"   # the one family of the ``family`` shift (codes 2582, 2583, 2585)
TINY_SIDE = 48
ENGLISH_FAMILY_WORDS = [  # one list per family of rakuten_common.synthetic.FAMILIES, in order
    ["book", "novel", "author", "edition", "paperback"], ["paper", "issue", "magazine", "notebook"],
    ["game", "video", "player", "level"], ["controller", "screen", "cable", "charger"],
    ["figure", "character", "series", "painted"], ["child", "baby", "soft", "toy"],
    ["home", "living", "room", "style"], ["garden", "outdoor", "patio", "lawn"],
    ["nature", "pet", "outdoor", "food"],
]
ENGLISH_FILLER = ["quality", "product", "ideal", "gift", "brand", "warranty", "fast", "shipping",
                  "colour", "size", "model", "genuine", "excellent", "new", "sale"]


def parse_shifts(text: str) -> tuple[str, ...]:
    """``"family,tiny"`` -> ``("family", "tiny")``; ``"all"`` -> every shift; ``""`` -> none."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if names == ("all",):
        return SHIFTS
    unknown = [n for n in names if n not in SHIFTS]
    if unknown:
        raise ValueError(f"unknown shift(s) {unknown}: use a comma-separated subset of {list(SHIFTS)} or 'all'")
    return names


def english_text(rng: np.random.Generator, code: int) -> tuple[str, str]:
    """An English (designation, description) of ``code``'s family: words the model never saw."""
    family = ENGLISH_FAMILY_WORDS[CLASS_INFO[code][0]]
    designation = " ".join(rng.choice(family + ENGLISH_FILLER, 5)).capitalize() + f" ref. {rng.integers(1000, 99999)}"
    description = "" if rng.random() < 0.35 else " ".join(rng.choice(family + ENGLISH_FILLER, 11)).capitalize() + "."
    return designation, description


def shifted_products(count: int, shifts: tuple[str, ...], seed: int = 0) -> list[Product]:
    """``count`` generated products departing from the training data in each of ``shifts``."""
    rng = np.random.default_rng(seed)
    weights = np.array([TRAIN_COUNTS[code] for code in PRDTYPECODES], dtype=float)
    if "family" in shifts:
        members = dict(next(m for name, _, m in FAMILIES if name == SHIFTED_FAMILY))
        weights *= [code in members for code in PRDTYPECODES]
    products = []
    for code in rng.choice(PRDTYPECODES, size=count, p=weights / weights.sum()):
        code = int(code)
        designation, description = english_text(rng, code) if "english" in shifts else make_text(rng, code)
        image = make_image(rng, code, TINY_SIDE if "tiny" in shifts else 500)
        if "grayscale" in shifts:
            image = image.convert("L")
        products.append(Product(designation, description, jpeg_bytes(image)))
    return products


def read_products(data_dir: Path, count: int, seed: int = 0) -> list[Product]:
    """``count`` products picked at random from a dataset folder in the Rakuten layout."""
    data_dir = Path(data_dir)
    split = next((s for s in (TRAIN, TEST) if (data_dir / s.features_csv).is_file()), None)
    if split is None:
        raise FileNotFoundError(f"{data_dir} holds neither {TRAIN.features_csv} nor {TEST.features_csv}")
    with open(data_dir / split.features_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    order = np.random.default_rng(seed).permutation(len(rows))
    products = []
    for i in order:
        row = rows[i]
        image = split.image_path(data_dir, row["imageid"], row["productid"])
        if image.is_file():  # a few products of the real set have no image
            products.append(Product(row["designation"], row.get("description") or "", image.read_bytes()))
            if len(products) == count:
                break
    if not products:
        raise FileNotFoundError(f"no product of {data_dir / split.features_csv} has its image in {data_dir / split.image_dir}")
    return products


def load_products(count: int, seed: int = 0, data_dir: str | Path | None = None) -> list[Product]:
    """Products from ``data_dir`` if given, generated otherwise."""
    return read_products(Path(data_dir), count, seed) if data_dir else generate_products(count, seed)


@dataclass(frozen=True)
class Encoded:
    """One ready-to-send request body."""

    rows: int
    body: bytes
    headers: dict[str, str]


def encode(products: list[Product], top_k: int = 1, payload: str = "base64") -> Encoded:
    if payload == "binary":
        body, headers = binary_infer_request(products, top_k)
    elif payload == "base64":
        body, headers = json.dumps(infer_request(products, top_k)).encode(), dict(JSON_HEADERS)
    else:
        raise ValueError(f"payload must be one of {PAYLOADS}, got {payload!r}")
    return Encoded(len(products), body, headers)


@dataclass
class RequestPool:
    """Pre-encoded bodies: one single-product request per product, plus small batches."""

    top_k: int
    payload: str
    singles: list[Encoded] = field(default_factory=list)
    batches: list[Encoded] = field(default_factory=list)
    mean_image_bytes: float = 0.0

    @classmethod
    def build(cls, products: list[Product], top_k: int = 1, payload: str = "base64",
              batch_sizes: tuple[int, int] = (2, 8), batches: int = 32, seed: int = 0) -> RequestPool:
        pool = cls(top_k, payload, mean_image_bytes=sum(len(p.image) for p in products) / len(products))
        pool.singles = [encode([p], top_k, payload) for p in products]
        rng = np.random.default_rng(seed + 1)
        low, high = batch_sizes
        for _ in range(batches if high > 1 else 0):
            n = int(rng.integers(max(low, 2), high + 1))
            chosen = [products[int(i)] for i in rng.choice(len(products), size=min(n, len(products)), replace=False)]
            pool.batches.append(encode(chosen, top_k, payload))
        return pool


def check_answer(answer: dict, rows: int, top_k: int) -> str | None:
    """``None`` if ``answer`` is a well-formed V2 answer for ``rows`` products, else what is wrong."""
    try:
        outputs = {o["name"]: o for o in answer["outputs"]}
        codes, probabilities = outputs["prdtypecode"], outputs["probability"]
    except (KeyError, TypeError):
        return f"no prdtypecode/probability outputs in {str(answer)[:200]}"
    for output, datatype in ((codes, "INT64"), (probabilities, "FP32")):
        if output.get("shape") != [rows, top_k]:
            return f"{output['name']} shape {output.get('shape')}, expected {[rows, top_k]}"
        if output.get("datatype") != datatype:
            return f"{output['name']} datatype {output.get('datatype')}, expected {datatype}"
        if len(output.get("data") or []) != rows * top_k:
            return f"{output['name']} holds {len(output.get('data') or [])} values, expected {rows * top_k}"
    unknown = sorted({c for c in codes["data"] if c not in _CODES})
    if unknown:
        return f"unknown prdtypecode(s) {unknown[:5]}"
    values = probabilities["data"]
    if not all(isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0 + 1e-6 for p in values):
        return "probability outside [0, 1]"
    for i in range(rows):
        row = values[i * top_k:(i + 1) * top_k]
        if any(a < b - 1e-6 for a, b in zip(row, row[1:])):
            return f"probabilities of row {i} are not in decreasing order"
    return None
