"""Drift monitoring inside the predictor: a rolling window of what was served, compared with the
model version's reference profile (``profile.json``), exported as Prometheus gauges.

Per product, O(1) work: on the preprocessing threads, its text features and a 16x16 pixel
sample of its decoded image are taken from what preprocessing produced
(``rakuten_common.profile``); after the answer they are queued with its top-1 class and
confidence, and every ``FLUSH_PRODUCTS`` products (or at a scrape) the queue's image statistics
and bins are computed in one vectorised pass and enter the window. The window keeps its
per-bin counts, per-class counts and sums up to date as products enter and leave (at most
``drift_window_products`` products, none older than ``drift_window_seconds``), so that a scrape
computes every gauge from counts alone. Loading a model version starts a new, empty window.

Gauges (labels ``model_name``, ``model_version``; NaN while the window holds fewer than
``drift_min_products`` products):

    rakuten_drift_window_products                      products in the window
    rakuten_drift_psi{feature}                         PSI of the window against the reference
    rakuten_drift_prediction_js_distance{reference}    predicted classes vs class_prior | validation
    rakuten_drift_top1_confidence_mean{source}         window | reference (validation)
    rakuten_drift_low_confidence_share{source}         top-1 below drift_low_confidence
    rakuten_data_feature_mean{feature, source}         window | reference
"""
from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client.core import REGISTRY, GaugeMetricFamily

from model_server.settings import DriftSettings
from rakuten_common.bundle import PROFILE_FILE, load_profile, load_vocabulary
from rakuten_common.preprocessing import ImageInfo
from rakuten_common.profile import (
    CONFIDENCE,
    INPUT_FEATURE_NAMES,
    ProfileError,
    ReferenceProfile,
    image_features,
    image_sample,
    is_blank,
    js_distance,
    psi,
    text_features,
)

logger = logging.getLogger("rakuten.model_server.drift")

#: Observations are buffered and enter the window this many products at a time (or at a scrape).
FLUSH_PRODUCTS = 256


class Reference:
    """A version's profile, prepared for binning: the tracked features, their edges and offsets."""

    def __init__(self, version: str, profile: ReferenceProfile, vocabulary: frozenset[str], sequence_length: int):
        self.version, self.profile = version, profile
        self.vocabulary, self.sequence_length = vocabulary, sequence_length
        self.columns = [i for i, name in enumerate(INPUT_FEATURE_NAMES) if name in profile.features]
        self.names = [INPUT_FEATURE_NAMES[i] for i in self.columns] + [CONFIDENCE.name]
        self.edges = [np.asarray(profile.features[name].edges) for name in self.names[:-1]]
        if CONFIDENCE.name in profile.features:
            self.edges.append(np.asarray(profile.features[CONFIDENCE.name].edges))
        else:
            self.names.pop()
        sizes = [len(e) + 1 for e in self.edges]
        self.offsets = np.cumsum([0, *sizes[:-1]])
        self.slices = [slice(o, o + n) for o, n in zip(self.offsets.tolist(), sizes)]
        self.total_bins = sum(sizes)

    def bin_inputs(self, values: np.ndarray) -> np.ndarray:
        """Flat bin index of every tracked input feature: ``(N, len(columns))``."""
        bins = np.empty((len(values), len(self.columns)), dtype=np.int64)
        for j, column in enumerate(self.columns):
            bins[:, j] = np.searchsorted(self.edges[j], values[:, column], side="right") + self.offsets[j]
        return bins

    def bin_confidence(self, confidence: np.ndarray) -> np.ndarray:
        if self.names[-1] != CONFIDENCE.name:
            return np.empty((len(confidence), 0), dtype=np.int64)
        return (np.searchsorted(self.edges[-1], confidence, side="right") + self.offsets[-1]).reshape(-1, 1)


@dataclass(frozen=True)
class Observation:
    """One request's products as the drift window needs them (taken off the event loop)."""

    reference: Reference
    text: np.ndarray              # (N, 3) text_features
    infos: Sequence[ImageInfo]    # the images' header facts
    samples: np.ndarray           # (N, ~16, ~16, 3) image_sample of the decoded images


class RollingWindow:
    """The last ``capacity`` products (ring buffer), with running counts updated on entry and exit."""

    def __init__(self, capacity: int, total_bins: int, bin_columns: int, n_values: int, n_classes: int):
        self.capacity, self.start, self.size = capacity, 0, 0
        self.bin_counts = np.zeros(total_bins, dtype=np.int64)
        self.class_counts = np.zeros(n_classes, dtype=np.int64)
        self.value_sums = np.zeros(n_values)
        self.confidence_sum = 0.0
        self.low_confidence = 0
        self._bins = np.zeros((capacity, bin_columns), dtype=np.int64)
        self._values = np.zeros((capacity, n_values))
        self._classes = np.zeros(capacity, dtype=np.int64)
        self._confidence = np.zeros(capacity)
        self._low = np.zeros(capacity, dtype=bool)
        self._times = np.zeros(capacity)

    def add(self, times: np.ndarray, bins: np.ndarray, values: np.ndarray, classes: np.ndarray,
            confidence: np.ndarray, low: np.ndarray) -> None:
        """Append rows (oldest first); the oldest rows of the window make room."""
        n = min(len(times), self.capacity)
        overflow = self.size + n - self.capacity
        if overflow > 0:
            self._drop(overflow)
        at = (self.start + self.size + np.arange(n)) % self.capacity
        rows = slice(len(times) - n, None)
        self._times[at], self._bins[at], self._values[at] = times[rows], bins[rows], values[rows]
        self._classes[at], self._confidence[at], self._low[at] = classes[rows], confidence[rows], low[rows]
        self.size += n
        self._count(at, +1)

    def expire(self, oldest: float) -> None:
        """Drop the rows observed before ``oldest`` (their times are in ring order)."""
        stale = bisect.bisect_left(range(self.size), oldest,
                                   key=lambda i: self._times[(self.start + i) % self.capacity])
        if stale:
            self._drop(stale)

    def _drop(self, n: int) -> None:
        at = (self.start + np.arange(n)) % self.capacity
        self._count(at, -1)
        self.start, self.size = (self.start + n) % self.capacity, self.size - n

    def _count(self, at: np.ndarray, sign: int) -> None:
        self.bin_counts += sign * np.bincount(self._bins[at].ravel(), minlength=len(self.bin_counts))
        self.class_counts += sign * np.bincount(self._classes[at], minlength=len(self.class_counts))
        self.value_sums += sign * self._values[at].sum(axis=0)
        self.confidence_sum += sign * float(self._confidence[at].sum())
        self.low_confidence += sign * int(self._low[at].sum())
        if self.size == 0:  # no float residue from many additions and subtractions
            self.value_sums[:], self.confidence_sum = 0.0, 0.0


class DriftMonitor:
    """Feeds the window (``features`` then ``observe``) and is the Prometheus collector of its gauges."""

    def __init__(self, model_name: str, settings: DriftSettings, registry=REGISTRY):
        self.model_name, self.settings = model_name, settings
        self.reference: Reference | None = None
        self.window: RollingWindow | None = None
        self._pending: list[tuple] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    @property
    def active(self) -> bool:
        return self.reference is not None

    def start(self, bundle: Path, version: str, sequence_length: int) -> None:
        """Compare traffic with ``bundle``'s reference profile from now on, in a new empty window."""
        reference = None
        if self.settings.window_products <= 0:
            logger.info("Drift monitoring off (drift window of 0 products)")
        else:
            try:
                profile = load_profile(bundle)
                if profile is None:
                    logger.warning("Version %s has no %s: drift monitoring off", version, PROFILE_FILE)
                else:
                    reference = Reference(version, profile, load_vocabulary(bundle), sequence_length)
            except (ProfileError, OSError, ValueError) as exc:
                logger.error("Version %s: %s unusable, drift monitoring off: %s", version, PROFILE_FILE, exc)
        with self._lock:
            self.reference = reference
            self.window = (RollingWindow(self.settings.window_products, reference.total_bins, len(reference.names),
                                         len(INPUT_FEATURE_NAMES), len(reference.profile.prdtypecodes))
                           if reference else None)
            self._pending, self._pending_rows = [], 0
        if reference:
            s = self.settings
            logger.info("Drift monitoring of version %s: window of %d products / %.0f s, %d features, "
                        "gauges from %d products on", version, s.window_products, s.window_seconds,
                        len(reference.names), s.min_products)

    # -- feeding the window ------------------------------------------------------------------------
    def features(self, texts: Sequence[str], descriptions: Sequence[str], infos: Sequence[ImageInfo],
                 images: np.ndarray) -> Observation | None:
        """What the window needs of the products (thread-safe; runs on the preprocessing threads)."""
        reference = self.reference
        if reference is None:
            return None
        text = text_features(texts, [is_blank(d) for d in descriptions], reference.vocabulary,
                             reference.sequence_length)
        return Observation(reference, text, infos, image_sample(images))

    def observe(self, observation: Observation | None, classes: np.ndarray, confidence: np.ndarray) -> None:
        """Queue the served products (top-1 class index and probability) for the window."""
        if observation is None:
            return
        with self._lock:
            if observation.reference is not self.reference:
                return  # computed for a version that is no longer served
            self._pending.append((time.monotonic(), observation, np.asarray(classes), np.asarray(confidence)))
            self._pending_rows += len(classes)
            if self._pending_rows >= FLUSH_PRODUCTS:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        reference, pending = self.reference, self._pending
        self._pending, self._pending_rows = [], 0
        observations = [o for _, o, _, _ in pending]
        times = np.concatenate([np.full(len(classes), t) for t, _, classes, _ in pending])
        values = np.hstack([np.concatenate([o.text for o in observations]),
                            image_features([i for o in observations for i in o.infos],
                                           np.concatenate([o.samples for o in observations]))])
        classes = np.concatenate([c for _, _, c, _ in pending])
        confidence = np.concatenate([p for _, _, _, p in pending]).astype(np.float64)
        bins = np.hstack([reference.bin_inputs(values), reference.bin_confidence(confidence)])
        self.window.add(times, bins, values, classes, confidence, confidence < self.settings.low_confidence)

    # -- Prometheus collector ----------------------------------------------------------------------
    def describe(self):
        return []  # no fixed set of series: collect() is only called at scrape time

    def collect(self):
        with self._lock:
            if self.reference is None:
                return []
            self._flush()
            self.window.expire(time.monotonic() - self.settings.window_seconds)
            return list(self._families(self.reference, self.window))

    def _families(self, reference: Reference, window: RollingWindow):
        profile, n = reference.profile, window.size
        enough = n >= max(1, self.settings.min_products)
        labels = [self.model_name, reference.version]

        def family(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["model_name", "model_version", *extra])

        def share(count: float) -> float:
            return count / n if enough else math.nan

        size = family("rakuten_drift_window_products", "Products in the drift window")
        size.add_metric(labels, n)
        yield size

        drift = family("rakuten_drift_psi", "Population Stability Index of each feature in the drift window "
                       "against the model version's reference profile", ("feature",))
        for name, bins in zip(reference.names, reference.slices):
            expected = profile.features[name].probabilities
            drift.add_metric([*labels, name], psi(expected, window.bin_counts[bins] / n) if enough else math.nan)
        yield drift

        js = family("rakuten_drift_prediction_js_distance", "Jensen-Shannon distance (base 2) of the predicted "
                    "classes in the window from the training class prior or the validation predictions", ("reference",))
        for name, expected in (("class_prior", profile.class_prior), ("validation", profile.predicted_classes)):
            js.add_metric([*labels, name], js_distance(window.class_counts, np.asarray(expected)) if enough else math.nan)
        yield js

        confidence = family("rakuten_drift_top1_confidence_mean", "Mean top-1 probability, in the window "
                            "or on the validation split (reference)", ("source",))
        confidence.add_metric([*labels, "window"], share(window.confidence_sum))
        if CONFIDENCE.name in profile.features:
            confidence.add_metric([*labels, "reference"], profile.features[CONFIDENCE.name].mean)
        yield confidence

        low = family("rakuten_drift_low_confidence_share", "Share of predictions whose top-1 probability is "
                     f"below {self.settings.low_confidence:g}, in the window or on the validation split", ("source",))
        low.add_metric([*labels, "window"], share(window.low_confidence))
        low.add_metric([*labels, "reference"], profile.low_confidence_share(self.settings.low_confidence))
        yield low

        means = family("rakuten_data_feature_mean", "Mean of each product feature, in the drift window or in "
                       "the reference profile", ("feature", "source"))
        for column in reference.columns:
            name = INPUT_FEATURE_NAMES[column]
            means.add_metric([*labels, name, "window"], share(window.value_sums[column]))
            means.add_metric([*labels, name, "reference"], profile.features[name].mean)
        yield means
