"""The CPU-bound part of serving a request, run on the preprocessing threads.

``prepare_units`` is a request's first unit of work in the ``FairPool``: parse the body (JSON
or binary extension; gRPC requests come parsed), validate it (the codec), take its products
from the admission bound, read every image's header and charge the request's pixel budget,
then decode the products: inline for one, as one unit each for several (spread over the
threads, taking turns with other requests). ``prepare`` does the same serially (the parity
tests compare it with training's loader).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
from kserve.protocol.infer_type import InferRequest

from model_server.admission import Deadline, Ticket
from model_server.binary import decode_binary_request
from model_server.codec import (
    Products,
    RequestRejected,
    decode_request,
    parse_json,
    request_from_json,
)
from model_server.drift import Observation
from model_server.pool import Job, Unit, heavy
from model_server.settings import RequestLimits
from rakuten_common.preprocessing import (
    ImageError,
    ImageInfo,
    ImageLimits,
    decode_cost,
    decode_image,
    decode_image_pixels,
    open_image,
    product_text,
)


@dataclass
class Incoming:
    """What a transport hands to the model: a raw REST body, or a request gRPC already parsed."""

    model_name: str
    deadline: Deadline
    request_id: str
    ticket: Ticket | None = None
    body: bytes | None = None
    json_length: str | None = None  # Inference-Header-Content-Length (binary extension)
    request: InferRequest | None = None

    def parse(self) -> InferRequest:
        if self.request is None:
            if self.json_length is not None:
                self.request = decode_binary_request(self.body, self.json_length, self.model_name)
            else:
                self.request = request_from_json(parse_json(self.body), self.model_name)
            self.body = None  # the parsed request holds what is needed
        return self.request


@dataclass
class Prepared:
    """One request after preprocessing, and later its probabilities."""

    request: InferRequest
    inputs: dict[str, np.ndarray]
    top_k: int
    response_id: str
    deadline: Deadline | None = None
    ticket: Ticket | None = None
    probabilities: np.ndarray | None = None
    descriptions: list[str] = field(default_factory=list)  # raw, for the drift features
    infos: list[ImageInfo] = field(default_factory=list)    # each image's header facts
    drift: Observation | None = None


def _rejected(index: int, exc: ImageError) -> RequestRejected:
    return RequestRejected(exc.reason, f"image[{index}]: {exc}")


def open_images(products: Products, size: int, limits: RequestLimits, infos: list[ImageInfo]) -> list:
    """Every image's header, checked (``infos`` receive what each says), and the request's
    decoding cost against its pixel budget."""
    opened, total = [], 0
    for i, data in enumerate(products.images):
        try:
            image = open_image(data, size, limits.image, infos[i])
        except ImageError as exc:
            raise _rejected(i, exc) from None
        opened.append(image)
        total += decode_cost(image)
    if total > limits.max_request_pixels:
        raise RequestRejected("request_too_many_pixels",
                              f"decoding this request's {len(opened)} image(s) takes {total} pixels, the limit "
                              f"is {limits.max_request_pixels} per request (JPEGs count at their reduced "
                              "decoding scale, 16-bit images twice): send smaller images or fewer per request")
    return opened


#: Images whose decoding produces more pixels than this are heavy units (see ``model_server.pool``):
#: a 500x500 product photo decodes to 0.06 MP at its reduced JPEG scale, a 2000x2000 PNG to 4 MP.
HEAVY_PIXELS = 2_000_000


def prepare_units(job: Job, incoming: Incoming, limits: RequestLimits, num_classes: int,
                  image_size: int) -> Prepared:
    """A request's first unit of work on the pool (see the module docstring)."""
    request = incoming.parse()
    products = decode_request(request, limits, num_classes)
    if incoming.ticket is not None:
        incoming.ticket.set_rows(len(products))
    infos = [ImageInfo() for _ in range(len(products))]
    opened = open_images(products, image_size, limits, infos)
    n = len(products)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    texts = np.empty(n, dtype=object)

    def product(i: int) -> None:
        try:
            images[i] = decode_image_pixels(opened[i], image_size)
        except ImageError as exc:
            raise _rejected(i, exc) from None
        texts[i] = product_text(products.designations[i], products.descriptions[i])

    costs = [decode_cost(image) for image in opened]
    if n == 1 and costs[0] <= HEAVY_PIXELS:
        product(0)  # the common case: one unit of work for the whole request
    else:
        units: list[Unit] = [heavy(partial(product, i)) if costs[i] > HEAVY_PIXELS else partial(product, i)
                             for i in range(n)]
        job.add(units)
    return Prepared(request, {"text": texts, "image": images}, products.top_k, request.id or incoming.request_id,
                    incoming.deadline, incoming.ticket, descriptions=products.descriptions, infos=infos)


def prepare(products: Products, image_size: int, image_limits: ImageLimits) -> dict[str, np.ndarray]:
    """Serial preprocessing of validated products with the shared text and image functions."""
    images = np.empty((len(products), image_size, image_size, 3), dtype=np.uint8)
    for i, data in enumerate(products.images):
        try:
            images[i] = decode_image(data, image_size, image_limits)
        except ImageError as exc:
            raise _rejected(i, exc) from None
    texts = np.array([product_text(d, s) for d, s in zip(products.designations, products.descriptions)],
                     dtype=object)
    return {"text": texts, "image": images}
