"""``RakutenClassifier``: the ``kserve.Model`` serving the concatenated text+image classifier.

preprocess: parse and validate the V2 request (4xx on any fault), clean text and decode
    images on the preprocessing threads (``FairPool``), off the event loop.
predict:    hand the arrays to the adaptive batcher, which runs the model on its own thread.
postprocess: top-k codes and probabilities as V2 outputs, and the prediction counters.

The transports (``model_server.app`` for REST, ``model_server.grpc_service``) hand in an
``Incoming``: the request's admission ticket, deadline and id, with a raw body or a request.
Drift monitoring (``model_server.drift``): each product's profile features are taken from what
preprocessing produced and enter the drift window with its top-1 in postprocess. Capture
(``model_server.capture``, with ``--capture_uri``): postprocess queues the sampled products.
"""
from __future__ import annotations

import gc
import logging
import uuid
from functools import partial

import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from model_server import metrics
from model_server.admission import Deadline
from model_server.batching import AdaptiveBatcher
from model_server.capture import Capture, start_capture
from model_server.codec import RequestRejected
from model_server.drift import DriftMonitor
from model_server.pool import FairPool
from model_server.preparation import Incoming, Prepared, prepare, prepare_units  # noqa: F401 - prepare: API
from model_server.settings import Settings
from rakuten_common.artifacts import fetch
from rakuten_common.bundle import load_bundle
from rakuten_common.labels import LabelMap
from rakuten_common.runner import ModelRunner

logger = logging.getLogger("rakuten.model_server")


class RakutenClassifier(kserve.Model):
    def __init__(self, settings: Settings):
        super().__init__(settings.model_name)
        self.settings = settings
        self.version: str | None = None
        self.labels: LabelMap | None = None
        self.runner: ModelRunner | None = None
        self.batcher: AdaptiveBatcher | None = None
        self.limits = settings.limits
        self._name_label = {"model_name": settings.model_name}
        wasted = metrics.WASTED_ROWS.labels(stage="preprocess", **self._name_label)
        self.pool = FairPool(settings.preprocess_workers, on_wasted=wasted.inc)
        self._wasted_model_rows = metrics.WASTED_ROWS.labels(stage="model", **self._name_label)
        self.drift = DriftMonitor(settings.model_name, settings.drift)
        self.capture: Capture | None = start_capture(settings.capture, settings.model_name)

    # -- lifecycle ---------------------------------------------------------------------
    def load(self) -> bool:
        """Fetch and verify the newest complete version, load it, warm it up; then ready.

        The seconds of each phase are exported as ``rakuten_model_load_seconds{phase}``.
        """
        timer = metrics.LoadTimer(self.settings.model_name)
        logger.info("Fetching model from %s", self.settings.model_uri)
        with timer.phase("fetch"):
            bundle, manifest = fetch(self.settings.model_uri, self.settings.model_cache_dir, progress=logger.info,
                                     fallback=self.settings.model_fallback)
        with timer.phase("load"):
            model, self.labels, spec = load_bundle(bundle)
        with timer.phase("warmup"):
            self.runner = ModelRunner(model, spec)
            self.runner.warm_up(tuple(sorted({1, self.settings.max_batch_size})))
        self.batcher = AdaptiveBatcher(self.runner, self.settings.max_batch_size,
                                       self.settings.max_batch_time, on_batch=self._observe_batch,
                                       on_wasted=self._wasted_model_rows.inc)
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

    def can_answer(self) -> bool:
        """Readiness: loaded, not stopped, and the batcher able to take work."""
        return self.ready and self.runner is not None and self.batcher is not None and self.batcher.healthy

    def stop(self) -> None:
        """Unloaded (repository API) or shutting down: not ready any more."""
        self.ready = False

    def close_capture(self) -> None:
        """Shutdown: write the sampled products still queued (bounded by --shutdown_timeout_seconds)."""
        if self.capture is not None:
            self.capture.close(max(5.0, self.settings.shutdown_timeout_seconds))

    def _observe_batch(self, rows: int, waits: list[float], seconds: float) -> None:
        metrics.BATCH_SIZE.labels(**self._name_label).observe(rows)
        metrics.MODEL_SECONDS.labels(**self._name_label).observe(seconds)
        for wait in waits:
            metrics.BATCH_WAIT.labels(**self._name_label).observe(wait)

    # -- metadata (GET /v2/models/<name>) ----------------------------------------------
    def get_input_types(self) -> list[dict]:
        return [{"name": name, "datatype": "BYTES", "shape": [-1]}
                for name in ("designation", "description", "image")] + [
                {"name": "productid", "datatype": "INT64", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        return [{"name": "prdtypecode", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "probability", "datatype": "FP32", "shape": [-1, -1]}]

    # -- inference ---------------------------------------------------------------------
    async def preprocess(self, payload: Incoming | InferRequest, headers: dict[str, str] | None = None) -> Prepared:
        if isinstance(payload, InferRequest):  # in-process callers
            payload = Incoming(self.name, Deadline.after(self.settings.request_timeout_seconds),
                               str(uuid.uuid4()), request=payload)
        self.batcher.incoming += 1
        try:
            prepared = await self.pool.run(partial(prepare_units, incoming=payload, limits=self.limits,
                                                   num_classes=len(self.labels), image_size=self.runner.spec.image_size),
                                           payload.deadline)
            prepared.drift = self.drift.features(prepared.inputs["text"], prepared.descriptions, prepared.infos,
                                                 prepared.inputs["image"])
            return prepared
        except RequestRejected as exc:
            metrics.REJECTED.labels(reason=exc.kind, **self._name_label).inc()
            raise
        finally:
            self.batcher.incoming -= 1

    async def predict(self, payload: Prepared, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> Prepared:
        try:
            with metrics.IN_FLIGHT.labels(**self._name_label).track_inprogress():
                payload.probabilities = await self.batcher.submit(payload.inputs, payload.deadline)
        finally:
            if payload.ticket is not None:
                payload.ticket.release_rows()  # out of the queue: later requests may take its place
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
        if self.capture is not None and result.products is not None:
            self.capture.observe(result.response_id, result.products, codes, probabilities, self.version)
        binary = result.request.use_binary_outputs
        outputs = []
        for name, array in (("prdtypecode", codes), ("probability", probabilities)):
            output = InferOutput(name=name, shape=list(array.shape), datatype="INT64" if name == "prdtypecode" else "FP32")
            output.set_data_from_numpy(array, binary_data=binary)
            outputs.append(output)
        return InferResponse(response_id=result.response_id, model_name=self.name,
                             model_version=self.version, infer_outputs=outputs, use_binary_outputs=binary,
                             parameters={"model_version": self.version})
