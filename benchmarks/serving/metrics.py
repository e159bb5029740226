"""The model server's ``/metrics``, parsed with ``prometheus_client``'s own parser."""
from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from rakuten_common.bundle import MODEL_NAME

LOAD_PHASES = ("fetch", "load", "warmup")
# Names a server may give a counter of work it dropped or skipped for expired/departed clients.
DROPPED_WORK = re.compile(r"^rakuten_\w*(dropped|expired|abandoned|departed|cancel|timed_out|deadline)\w*$")


@dataclass
class Scrape:
    """One ``/metrics`` answer: ``{sample name: [(labels, value), ...]}``."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls()
        for family in text_string_to_metric_families(text):
            scrape.types[family.name] = family.type
            for sample in family.samples:
                scrape.samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return scrape

    def total(self, name: str, **labels: str) -> float | None:
        """Sum of the samples named ``name`` whose labels include ``labels`` (None if none)."""
        values = [v for sample_labels, v in self.samples.get(name, [])
                  if all(sample_labels.get(k) == want for k, want in labels.items())]
        return sum(values) if values else None

    def names(self, pattern: re.Pattern) -> list[str]:
        return sorted(name for name in self.samples if pattern.match(name))


def scrape(base_url: str, timeout: float = 5.0) -> Scrape | None:
    """``GET /metrics`` parsed, or ``None`` if it does not answer 200 in time."""
    try:
        with urllib.request.urlopen(f"{base_url.rstrip('/')}/metrics", timeout=timeout) as response:
            return Scrape.parse(response.read().decode("utf-8", errors="replace"))
    except (OSError, urllib.error.URLError, ValueError):
        return None


def histogram_sum_count(metrics: Scrape | None, family: str, model_name: str = MODEL_NAME) -> tuple[float, float]:
    """``(sum, count)`` of a histogram for one model; zeros when absent."""
    if metrics is None:
        return 0.0, 0.0
    return (metrics.total(f"{family}_sum", model_name=model_name) or 0.0,
            metrics.total(f"{family}_count", model_name=model_name) or 0.0)


def model_rows(metrics: Scrape | None, model_name: str = MODEL_NAME) -> float:
    """Products that went through the model so far (the ``rakuten_batch_size`` histogram's sum)."""
    return histogram_sum_count(metrics, "rakuten_batch_size", model_name)[0]


def load_phases(metrics: Scrape | None, model_name: str = MODEL_NAME) -> dict[str, float]:
    """Seconds of each phase of the last model load, from ``rakuten_model_load_seconds{phase}``."""
    if metrics is None:
        return {}
    out = {}
    for phase in LOAD_PHASES:
        value = metrics.total("rakuten_model_load_seconds", model_name=model_name, phase=phase)
        if value is not None:
            out[phase] = value
    return out


def dropped_work(metrics: Scrape | None) -> dict[str, float]:
    """Every counter the server exports for dropped/expired work (``DROPPED_WORK``), summed over labels."""
    if metrics is None:
        return {}
    return {name: metrics.total(name) or 0.0 for name in metrics.names(DROPPED_WORK)
            if not name.endswith(("_created", "_bucket"))}
