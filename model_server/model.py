"""``RakutenClassifier``: the ``kserve.Model`` serving the concatenated text+image classifier.

preprocess: validate the V2 request (4xx on any fault), clean text and decode images on a
    thread pool, off the event loop.
predict:    hand the arrays to the adaptive batcher, which runs the model on its own thread.
postprocess: top-k codes and probabilities as V2 outputs, and the prediction counters.
Drift monitoring (``model_server.drift``): each product's profile features are computed in
preprocess, on the same threads, and enter the drift window with its top-1 in postprocess.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from model_server import metrics
from model_server.batching import AdaptiveBatcher
from model_server.codec import Products, RequestRejected, decode_request
from model_server.drift import DriftMonitor, Observation
from model_server.runner import ModelRunner
from model_server.settings import Settings
from rakuten_common.artifacts import fetch
from rakuten_common.bundle import load_bundle
from rakuten_common.labels import LabelMap
from rakuten_common.preprocessing import ImageError, ImageInfo, ImageLimits, decode_image, product_text

logger = logging.getLogger("rakuten.model_server")


@dataclass
class Prepared:
    """One request after preprocessing, and later its probabilities."""

    request: InferRequest
    inputs: dict[str, np.ndarray]
    top_k: int
    probabilities: np.ndarray | None = None
    drift: Observation | None = None


def prepare(products: Products, image_size: int, image_limits: ImageLimits,
            infos: list[ImageInfo] | None = None) -> dict[str, np.ndarray]:
    """The CPU-bound part of serving's preprocessing: the shared text and image functions
    (``infos``, if given, receive each image's header facts)."""
    images = np.empty((len(products), image_size, image_size, 3), dtype=np.uint8)
    for i, data in enumerate(products.images):
        try:
            images[i] = decode_image(data, image_size, image_limits, infos[i] if infos else None)
        except ImageError as exc:
            raise RequestRejected(exc.reason, f"image[{i}]: {exc}") from None
    texts = np.array([product_text(d, s) for d, s in zip(products.designations, products.descriptions)],
                     dtype=object)
    return {"text": texts, "image": images}


class RakutenClassifier(kserve.Model):
    def __init__(self, settings: Settings):
        super().__init__(settings.model_name)
        self.settings = settings
        self.version: str | None = None
        self.labels: LabelMap | None = None
        self.runner: ModelRunner | None = None
        self.batcher: AdaptiveBatcher | None = None
        self.limits = settings.limits
        self._pool = ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="preprocess")
        self._name_label = {"model_name": settings.model_name}
        self.drift = DriftMonitor(settings.model_name, settings.drift)

    # -- lifecycle ---------------------------------------------------------------------
    def load(self) -> bool:
        """Fetch and verify the newest complete version, load it, warm it up; then ready.

        The seconds of each phase are exported as ``rakuten_model_load_seconds{phase}``.
        """
        timer = metrics.LoadTimer(self.settings.model_name)
        logger.info("Fetching model from %s", self.settings.model_uri)
        with timer.phase("fetch"):
            bundle, manifest = fetch(self.settings.model_uri, self.settings.model_cache_dir, progress=logger.info)
        with timer.phase("load"):
            model, self.labels, spec = load_bundle(bundle)
        with timer.phase("warmup"):
            self.runner = ModelRunner(model, spec)
            self.runner.warm_up(tuple(sorted({1, self.settings.max_batch_size})))
        self.batcher = AdaptiveBatcher(self.runner, self.settings.max_batch_size,
                                       self.settings.max_batch_time, on_batch=self._observe_batch)
        self.version = manifest.version
        self.drift.start(bundle, manifest.version, spec.sequence_length)  # a new version, a new window
        # Move the long-lived heap (TensorFlow, Keras, the model) out of the collector's reach:
        # full collections then scan only request garbage instead of pausing the whole server.
        gc.collect()
        gc.freeze()
        metrics.MODEL_INFO.labels(version=manifest.version, **self._name_label).set(1)
        logger.info("Loaded version %s (%s) in %s; batching max %d rows / %.1f ms", manifest.version,
                    manifest.metrics, timer, self.settings.max_batch_size, self.settings.max_batch_time_ms)
        self.ready = True
        return self.ready

    def _observe_batch(self, rows: int, waits: list[float], seconds: float) -> None:
        metrics.BATCH_SIZE.labels(**self._name_label).observe(rows)
        metrics.MODEL_SECONDS.labels(**self._name_label).observe(seconds)
        for wait in waits:
            metrics.BATCH_WAIT.labels(**self._name_label).observe(wait)

    # -- metadata (GET /v2/models/<name>) ----------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": name, "datatype": "BYTES", "shape": [-1]}
                for name in ("designation", "description", "image")]

    def get_output_types(self) -> list[dict]:
        return [{"name": "prdtypecode", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "probability", "datatype": "FP32", "shape": [-1, -1]}]

    # -- inference ---------------------------------------------------------------------
    async def preprocess(self, payload: InferRequest, headers: dict[str, str] | None = None) -> Prepared:
        self.batcher.incoming += 1
        try:
            products = decode_request(payload, self.limits, len(self.labels))
            inputs, drift = await asyncio.get_running_loop().run_in_executor(self._pool, self._prepare, products)
        except RequestRejected as exc:
            metrics.REJECTED.labels(reason=exc.kind, **self._name_label).inc()
            raise
        finally:
            self.batcher.incoming -= 1
        return Prepared(payload, inputs, products.top_k, drift=drift)

    def _prepare(self, products: Products) -> tuple[dict[str, np.ndarray], Observation | None]:
        """``prepare`` plus the products' drift features, on a preprocessing thread."""
        if not self.drift.active:
            return prepare(products, self.runner.spec.image_size, self.limits.image), None
        infos = [ImageInfo() for _ in range(len(products))]
        inputs = prepare(products, self.runner.spec.image_size, self.limits.image, infos)
        return inputs, self.drift.features(inputs["text"], products.descriptions, infos, inputs["image"])

    async def predict(self, payload: Prepared, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Prepared:
        with metrics.IN_FLIGHT.labels(**self._name_label).track_inprogress():
            payload.probabilities = await self.batcher.submit(payload.inputs)
        return payload

    async def postprocess(self, result: Prepared, headers: dict[str, str] | None = None,
                          response_headers: dict[str, str] | None = None) -> InferResponse:
        k = result.top_k
        best = np.argsort(-result.probabilities, axis=1, kind="stable")[:, :k]
        codes = np.asarray(self.labels.codes, dtype=np.int64)[best]
        probabilities = np.take_along_axis(result.probabilities, best, axis=1).astype(np.float32)
        for code in codes[:, 0]:
            metrics.PREDICTIONS.labels(prdtypecode=str(code), **self._name_label).inc()
        self.drift.observe(result.drift, best[:, 0], probabilities[:, 0])
        binary = result.request.use_binary_outputs
        outputs = []
        for name, array in (("prdtypecode", codes), ("probability", probabilities)):
            output = InferOutput(name=name, shape=list(array.shape), datatype="INT64" if name == "prdtypecode" else "FP32")
            output.set_data_from_numpy(array, binary_data=binary)
            outputs.append(output)
        return InferResponse(response_id=result.request.id or str(uuid.uuid4()), model_name=self.name,
                             model_version=self.version, infer_outputs=outputs, use_binary_outputs=binary,
                             parameters={"model_version": self.version})
