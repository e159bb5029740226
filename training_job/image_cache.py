"""Decoded images on disk: each image decoded once (the shared ``decode_image``), read back by row.

Training at 128 px on the real set would need 85 k x 48 KB = 4.2 GB of decoded pixels; held in
memory (twice, once more in a ``tf.data`` constant) that is over any sane pod limit. Here the
pixels live in one file of fixed-size rows (``.npy``: a header then ``(N, size, size, 3)`` uint8),
written in parallel chunks and read back with ``os.pread`` a batch at a time, so the process
holds only a chunk while building and a batch while training: memory does not grow with rows.

A cache is keyed by the image files (names and sizes) and the pixel size, and is reused by a
later run (e.g. the ablation models, or a retraining on the same data); a cache whose build was
interrupted is rebuilt.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rakuten_common.preprocessing import ImageError, decode_image

logger = logging.getLogger("rakuten.training")

_CHUNK = 256  # images decoded and written per step (bounds memory while building)


@dataclass
class ImageCache:
    """``(rows, size, size, 3)`` uint8 pixels in ``path``; ``failed`` maps row -> why it is blank."""

    path: Path
    rows: int
    size: int
    offset: int
    failed: dict[int, str]

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


def build(paths: list[Path], size: int, directory: Path, workers: int) -> ImageCache:
    """Decode every image of ``paths`` at ``size`` into a cache file under ``directory`` (or reuse one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size)
    path, failed_path = directory / f"images-{size}px-{key}.npy", directory / f"images-{size}px-{key}.failed"
    header = _header(len(paths), size)
    if path.is_file() and failed_path.is_file():
        failed = {int(line.split("\t", 1)[0]): line.split("\t", 1)[1]
                  for line in failed_path.read_text().splitlines() if line}
        logger.info("Reusing decoded images %s (%d rows at %d px)", path, len(paths), size)
        return ImageCache(path, len(paths), size, len(header), failed)
    logger.info("Decoding %d images at %dx%d into %s (%.2f GB on disk)", len(paths), size, size, path,
                len(paths) * size * size * 3 / 1e9)
    partial = path.with_suffix(".partial")
    row_bytes = size * size * 3
    failed: dict[int, str] = {}
    started, last = time.monotonic(), 0.0

    def decode(row: int) -> tuple[int, bytes]:
        try:
            return row, decode_image(paths[row].read_bytes(), size).tobytes()
        except (ImageError, OSError) as exc:
            failed[row] = f"{paths[row].name}: {exc}"
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
    os.replace(partial, path)
    failed_path.write_text("".join(f"{row}\t{why}\n" for row, why in sorted(failed.items())))
    return ImageCache(path, len(paths), size, len(header), failed)
