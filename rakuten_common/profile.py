"""Data profiles: what a model version's data looked like, and how far live traffic is from it.

One implementation for both sides. Training computes the features below on its held-out
validation split and saves the *reference profile* (``profile.json``) in the bundle; the
predictor computes the same features on every product it serves and compares its rolling
window with the reference (``model_server.drift``).

Features of one product, all from what preprocessing already produced (O(1) work each: the
text is scanned once by ``str.count``, at most ``sequence_length`` tokens are looked up, the
image statistics use a subsample of about 16x16 pixels of the already decoded array):

    text_tokens        tokens of the cleaned title + description (``product_text``)
    description_empty  1 when the raw description is blank
    text_oov_share     share of the first ``sequence_length`` tokens missing from the model's vocabulary
    image_width        original width from the file header (``ImageInfo``)
    image_height       original height
    image_aspect       width / height
    image_format       0 JPEG, 1 PNG, 2 WEBP, 3 anything else
    image_brightness   mean of R, G and B, in [0, 1]
    image_saturation   mean HSV saturation, (max - min) / max per pixel, in [0, 1]

The model's output adds ``top1_confidence`` (the best class's probability). Every feature has
fixed bin edges (value ``v`` falls in bin ``searchsorted(edges, v, side="right")``); the profile
stores the edges it was built with, so serving bins exactly as training did.

The profile is computed on the validation split, not the training split: the share of
out-of-vocabulary tokens is zero by construction on the texts the vocabulary was learnt from.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rakuten_common.errors import ProfileError
from rakuten_common.preprocessing import ImageInfo

PROFILE_FORMAT = "rakuten-reference-profile/1"
#: Bigger profile files are refused (a real one is a few KB).
MAX_PROFILE_BYTES = 1024 * 1024
#: Probability given to an empty bin in PSI, so that ln(a / e) stays finite.
PSI_EPSILON = 1e-4
#: Image statistics look at about this many pixels per side (every k-th pixel of the decoded array).
IMAGE_SAMPLE_SIDE = 16
#: Quantiles of the validation top-1 confidence kept in the profile (0 %, 1 %, ..., 100 %).
CONFIDENCE_QUANTILES = 101
IMAGE_FORMAT_CODES = {"JPEG": 0, "PNG": 1, "WEBP": 2}  # anything else: 3


@dataclass(frozen=True)
class Feature:
    name: str
    edges: tuple[float, ...]
    help: str


_SIDES = (64, 128, 256, 400, 499.5, 500.5, 800, 1200)
INPUT_FEATURES: tuple[Feature, ...] = (
    Feature("text_tokens", (1, 3, 5, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256), "tokens of the cleaned text"),
    Feature("description_empty", (0.5,), "1 if the description is blank"),
    Feature("text_oov_share", (1e-9, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1 - 1e-9),
            "share of the model's tokens missing from its vocabulary"),
    Feature("image_width", _SIDES, "original image width (pixels)"),
    Feature("image_height", _SIDES, "original image height (pixels)"),
    Feature("image_aspect", (0.5, 0.75, 0.95, 1.05, 1.33, 2.0), "image width / height"),
    Feature("image_format", (0.5, 1.5, 2.5), "0 JPEG, 1 PNG, 2 WEBP, 3 other"),
    Feature("image_brightness", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "mean RGB level in [0, 1]"),
    Feature("image_saturation", (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7), "mean HSV saturation in [0, 1]"),
)
INPUT_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in INPUT_FEATURES)
CONFIDENCE = Feature("top1_confidence", (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
                     "probability of the predicted class")
FEATURES: dict[str, Feature] = {f.name: f for f in (*INPUT_FEATURES, CONFIDENCE)}


# -- per-product features -----------------------------------------------------------------------
def model_vocabulary(tokens) -> frozenset[str]:
    """The tokens a text can match in the model's vocabulary (without the padding and ``[UNK]`` entries)."""
    return frozenset(tokens) - {"", "[UNK]"}


def is_blank(text: str | None) -> bool:
    """Whether a raw text field holds nothing but whitespace (``None``/NaN count as blank)."""
    return not isinstance(text, str) or not text.strip()


def text_features(texts: Sequence[str] | np.ndarray, blank_descriptions: Sequence[bool], vocabulary: frozenset[str],
                  sequence_length: int) -> np.ndarray:
    """``(N, 3)``: token count, blank description, out-of-vocabulary share of the model's tokens."""
    rows = []
    known = vocabulary.__contains__
    for text, blank in zip(texts, blank_descriptions):
        if text:  # product_text() separates tokens by exactly one space
            tokens = text.split(" ", sequence_length)[:max(1, sequence_length)]
            rows.append((text.count(" ") + 1, bool(blank), 1.0 - sum(map(known, tokens)) / len(tokens)))
        else:
            rows.append((0, bool(blank), 0.0))
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def image_sample(images: np.ndarray) -> np.ndarray:
    """Every ``s // 16``-th pixel of each side of a decoded ``(N, s, s, 3)`` batch (a small copy).

    ``image_features`` gives the same values for the sample as for the full arrays.
    """
    step = max(1, images.shape[1] // IMAGE_SAMPLE_SIDE)
    return np.ascontiguousarray(images[:, ::step, ::step, :])


def image_features(infos: Sequence[ImageInfo], images: np.ndarray) -> np.ndarray:
    """``(N, 6)``: width, height, aspect, format code, brightness, saturation.

    ``images`` is the decoded ``(N, s, s, 3)`` uint8 batch, or its ``image_sample``; the
    statistics use about 16x16 pixels of each.
    """
    out = np.array([(i.width, i.height, i.width / i.height if i.height else 0.0, IMAGE_FORMAT_CODES.get(i.format, 3),
                     0.0, 0.0) for i in infos], dtype=np.float64).reshape(-1, 6)
    if len(infos):
        sample = image_sample(images)
        r, g, b = (sample[..., c].astype(np.float32) for c in range(3))
        high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
        out[:, 4] = (r + g + b).mean(axis=(1, 2)) / (3 * 255.0)
        out[:, 5] = ((high - low) / np.maximum(high, 1.0)).mean(axis=(1, 2))
    return out


def product_features(texts: Sequence[str] | np.ndarray, blank_descriptions: Sequence[bool], infos: Sequence[ImageInfo],
                     images: np.ndarray, vocabulary: frozenset[str], sequence_length: int) -> np.ndarray:
    """``(N, len(INPUT_FEATURES))`` feature values, columns in ``INPUT_FEATURE_NAMES`` order."""
    return np.hstack([text_features(texts, blank_descriptions, vocabulary, sequence_length),
                      image_features(infos, images)])


# -- distances ------------------------------------------------------------------------------------
def distribution(counts: np.ndarray) -> np.ndarray:
    """Counts -> probabilities (all zeros stay zeros)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def histogram(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Share of ``values`` in each of the ``len(edges) + 1`` bins."""
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    return distribution(np.bincount(bins, minlength=len(edges) + 1))


def psi(expected: np.ndarray | Sequence[float], actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population Stability Index, sum((a - e) * ln(a / e)), empty bins counted as ``epsilon``.

    Usual reading: < 0.1 no shift, 0.1-0.25 moderate, > 0.25 major.
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    a = np.maximum(np.asarray(actual, dtype=np.float64), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two distributions (same as
    ``scipy.spatial.distance.jensenshannon(p, q, base=2)``, without needing SciPy in the server)."""
    p, q = distribution(p), distribution(q)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nonzero = a > 0
        return float(np.sum(a[nonzero] * np.log2(a[nonzero] / m[nonzero])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


# -- the reference profile -------------------------------------------------------------------------
@dataclass(frozen=True)
class Histogram:
    edges: tuple[float, ...]
    probabilities: tuple[float, ...]
    mean: float


@dataclass(frozen=True)
class ReferenceProfile:
    """``profile.json``: the reference distributions of one model version."""

    rows: int                                 # validation rows the distributions come from
    features: dict[str, Histogram]            # the input features and top1_confidence
    prdtypecodes: tuple[int, ...]             # class order of the two distributions below
    class_prior: tuple[float, ...]            # share of each class in the training labels
    predicted_classes: tuple[float, ...]      # share of each class among validation predictions
    confidence_quantiles: tuple[float, ...]   # 0 %, 1 %, ..., 100 % quantiles of validation top-1

    def low_confidence_share(self, threshold: float) -> float:
        """Share of validation predictions whose top-1 probability is below ``threshold``."""
        q = np.asarray(self.confidence_quantiles)
        return float(np.interp(threshold, q, np.linspace(0.0, 1.0, len(q)), left=0.0, right=1.0))

    def to_json(self) -> str:
        return json.dumps({
            "format": PROFILE_FORMAT,
            "rows": self.rows,
            "features": {name: {"edges": list(h.edges), "probabilities": _rounded(h.probabilities),
                                "mean": round(h.mean, 6)} for name, h in self.features.items()},
            "classes": {"prdtypecodes": list(self.prdtypecodes), "prior": _rounded(self.class_prior),
                        "validation_predicted": _rounded(self.predicted_classes)},
            "top1_confidence_quantiles": _rounded(self.confidence_quantiles),
        }, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        """Parse and validate (the file comes from storage: every field is checked)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ProfileError(f"profile is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"profile format is not {PROFILE_FORMAT!r}")
        features = {}
        for name, entry in _field(data, "features", dict).items():
            if name not in FEATURES:
                continue  # written by a newer trainer: serving cannot compute it
            edges = _numbers(entry, "edges", name, max_len=64)
            if any(b <= a for a, b in zip(edges, edges[1:])):
                raise ProfileError(f"profile feature {name}: edges are not increasing")
            features[name] = Histogram(edges, _probabilities(entry, "probabilities", name, len(edges) + 1),
                                       _number(entry, "mean", name))
        classes = _field(data, "classes", dict)
        codes = tuple(int(c) for c in _numbers(classes, "prdtypecodes", "classes", max_len=1000))
        quantiles = _numbers(data, "top1_confidence_quantiles", "profile", max_len=CONFIDENCE_QUANTILES)
        if len(quantiles) != CONFIDENCE_QUANTILES or any(b < a for a, b in zip(quantiles, quantiles[1:])):
            raise ProfileError(f"profile top1_confidence_quantiles must be {CONFIDENCE_QUANTILES} sorted values")
        rows = data.get("rows")
        if not isinstance(rows, int) or rows < 1:
            raise ProfileError("profile rows must be a positive integer")
        return cls(rows, features, codes, _probabilities(classes, "prior", "classes", len(codes)),
                   _probabilities(classes, "validation_predicted", "classes", len(codes)), quantiles)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> ReferenceProfile:
        path = Path(path)
        size = path.stat().st_size
        if size > MAX_PROFILE_BYTES:
            raise ProfileError(f"{path.name} is {size} bytes, more than the {MAX_PROFILE_BYTES} a profile may have")
        return cls.from_json(path.read_text(encoding="utf-8"))


def build_profile(features: np.ndarray, probabilities: np.ndarray, train_codes: Sequence[int] | np.ndarray,
                  prdtypecodes: Sequence[int]) -> ReferenceProfile:
    """The reference profile of a model version.

    ``features``: ``product_features`` of the validation rows; ``probabilities``: the model's
    ``(rows, classes)`` output on the same rows; ``train_codes``: the training labels (the prior);
    ``prdtypecodes``: the model's class order.
    """
    if len(features) != len(probabilities) or not len(features):
        raise ValueError("the profile needs the features and the predictions of the same validation rows")
    index = {int(code): i for i, code in enumerate(prdtypecodes)}
    histograms = {f.name: Histogram(f.edges, tuple(histogram(features[:, i], f.edges)), float(features[:, i].mean()))
                  for i, f in enumerate(INPUT_FEATURES)}
    confidence = probabilities.max(axis=1)
    histograms[CONFIDENCE.name] = Histogram(CONFIDENCE.edges, tuple(histogram(confidence, CONFIDENCE.edges)),
                                            float(confidence.mean()))
    prior = np.bincount([index[int(code)] for code in train_codes], minlength=len(index))
    return ReferenceProfile(
        rows=len(features), features=histograms, prdtypecodes=tuple(index),
        class_prior=tuple(distribution(prior)),
        predicted_classes=tuple(distribution(np.bincount(probabilities.argmax(axis=1), minlength=len(index)))),
        confidence_quantiles=tuple(np.quantile(confidence, np.linspace(0, 1, CONFIDENCE_QUANTILES))))


# -- validation helpers of from_json ----------------------------------------------------------------
def _rounded(values) -> list[float]:
    return [round(float(v), 6) for v in values]


def _field(data: dict, key: str, kind: type):
    value = data.get(key)
    if not isinstance(value, kind):
        raise ProfileError(f"profile field {key!r} is missing or not a {kind.__name__}")
    return value


def _number(entry, key: str, where: str) -> float:
    value = entry.get(key) if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProfileError(f"profile {where}: {key} must be a finite number")
    return float(value)


def _numbers(entry, key: str, where: str, max_len: int) -> tuple[float, ...]:
    values = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(values, list) or not 0 < len(values) <= max_len or not all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ProfileError(f"profile {where}: {key} must be a list of 1 to {max_len} finite numbers")
    return tuple(float(v) for v in values)


def _probabilities(entry, key: str, where: str, length: int) -> tuple[float, ...]:
    values = _numbers(entry, key, where, max_len=length)
    if len(values) != length or min(values) < 0 or abs(sum(values) - 1) > 1e-3:
        raise ProfileError(f"profile {where}: {key} must be {length} non-negative shares summing to 1")
    return tuple(distribution(np.asarray(values)))
