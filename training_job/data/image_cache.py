"""Decoded images on disk: each image decoded once (the shared ``decode_image``), read back by row.

Training at 128 px on the real set would need 85 k x 48 KB = 4.2 GB of decoded pixels; held in
memory (twice, once more in a ``tf.data`` constant) that is over any sane pod limit. Here the
pixels live in one file of fixed-size rows (``.npy``: a header then ``(N, size, size, 3)`` uint8),
written in parallel chunks and read back with ``os.pread`` a batch at a time, so the process
holds only a chunk while building and a batch while training: memory does not grow with rows.

While decoding, the cache also records what each file's header says (format, width, height)
and why a refused file was refused (``ImageError.reason``), in a small ``.meta.json`` beside the
pixels: the data-quality checks and the reference profile read those instead of decoding again.
A cache is keyed by the image files (names and sizes) and the pixel size, and is reused by a
later run (e.g. the ablation models, or a retraining on the same data); a cache whose build was
interrupted is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rakuten_common.preprocessing import ImageError, ImageInfo, decode_image

logger = logging.getLogger("rakuten.training")

_CHUNK = 256  # images decoded and written per step (bounds memory while building)


@dataclass
class ImageCache:
    """``(rows, size, size, 3)`` uint8 pixels in ``path``, and per row what the file's header said.

    ``failed`` maps a row whose image was refused (its pixels are blank) to the refusal reason
    (e.g. ``image_corrupt``), ``messages`` to the full message naming the file.
    """

    path: Path
    rows: int
    size: int
    offset: int
    infos: list[ImageInfo]
    failed: dict[int, str]
    messages: dict[int, str]

    @property
    def row_bytes(self) -> int:
        return self.size * self.size * 3

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The images of ``rows`` (any order), copied into a fresh array."""
        out = np.empty((len(rows), self.size, self.size, 3), dtype=np.uint8)
        flat = out.reshape(len(rows), -1)
        with open(self.path, "rb", buffering=0) as f:
            for i, row in enumerate(rows):
                flat[i] = np.frombuffer(os.pread(f.fileno(), self.row_bytes, self.offset + int(row) * self.row_bytes),
                                        dtype=np.uint8)
        return out


def cache_key(paths: list[Path], size: int) -> str:
    digest = hashlib.sha256(f"size={size}\n".encode())
    for path in paths:
        digest.update(f"{path}:{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:20]


def _header(rows: int, size: int) -> bytes:
    """A ``.npy`` header for the pixel array, padded so the data starts at a 64-byte boundary."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": (rows, size, size, 3)})
    return buffer.getvalue()


def _load_meta(path: Path) -> tuple[list[ImageInfo], dict[int, str], dict[int, str]]:
    meta = json.loads(path.read_text())
    infos = [ImageInfo(fmt, width, height) for fmt, width, height in meta["infos"]]
    return infos, {int(k): v for k, v in meta["failed"].items()}, {int(k): v for k, v in meta["messages"].items()}


def build(paths: list[Path], size: int, directory: Path, workers: int) -> ImageCache:
    """Decode every image of ``paths`` at ``size`` into a cache file under ``directory`` (or reuse one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size)
    path, meta_path = directory / f"images-{size}px-{key}.npy", directory / f"images-{size}px-{key}.meta.json"
    header = _header(len(paths), size)
    if path.is_file() and meta_path.is_file():
        logger.info("Reusing decoded images %s (%d rows at %d px)", path, len(paths), size)
        return ImageCache(path, len(paths), size, len(header), *_load_meta(meta_path))
    logger.info("Decoding %d images at %dx%d into %s (%.2f GB on disk)", len(paths), size, size, path,
                len(paths) * size * size * 3 / 1e9)
    partial = path.with_suffix(".partial")
    row_bytes = size * size * 3
    infos = [ImageInfo() for _ in paths]
    failed: dict[int, str] = {}
    messages: dict[int, str] = {}
    started, last = time.monotonic(), 0.0

    def decode(row: int) -> tuple[int, bytes]:
        try:
            return row, decode_image(paths[row].read_bytes(), size, info=infos[row]).tobytes()
        except ImageError as exc:
            failed[row], messages[row] = exc.reason, f"{paths[row].name}: {exc}"
        except OSError as exc:
            failed[row], messages[row] = "unreadable_file", f"{paths[row].name}: {exc.strerror or exc}"
        return row, bytes(row_bytes)

    with open(partial, "wb") as f, ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        f.write(header)
        f.truncate(len(header) + len(paths) * row_bytes)
        for start in range(0, len(paths), _CHUNK):
            for row, pixels in pool.map(decode, range(start, min(start + _CHUNK, len(paths)))):
                os.pwrite(f.fileno(), pixels, len(header) + row * row_bytes)
            done = min(start + _CHUNK, len(paths))
            now = time.monotonic()
            if now - last >= 10 or done == len(paths):
                last = now
                logger.info("  decoded %d/%d images (%.0f/s)", done, len(paths), done / max(now - started, 1e-9))
    meta_path.write_text(json.dumps({"infos": [[i.format, i.width, i.height] for i in infos],
                                     "failed": failed, "messages": messages}))
    os.replace(partial, path)
    return ImageCache(path, len(paths), size, len(header), infos, failed, messages)
