"""Training streams decoded images from an on-disk cache: memory does not grow with the rows."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from rakuten_common.preprocessing import decode_image
from tests.support.servers import REPO
from training_job.data import image_cache


def photos(folder, count: int, size: int = 500):
    """``count`` distinct image files (hard links of a few JPEGs: decoding is the real work)."""
    folder.mkdir(parents=True, exist_ok=True)
    originals = []
    for i in range(4):
        buffer = io.BytesIO()
        Image.new("RGB", (size, size), (60 * i, 120, 200 - 40 * i)).save(buffer, "JPEG")
        path = folder / f"original_{i}.jpg"
        path.write_bytes(buffer.getvalue())
        originals.append(path)
    paths = []
    for n in range(count):
        path = folder / f"image_{n}_product_{n}.jpg"
        if not path.exists():
            os.link(originals[n % 4], path)
        paths.append(path)
    return paths


def test_rows_read_back_are_the_decoded_images_and_failures_are_kept(tmp_path):
    paths = photos(tmp_path / "images", 40)
    paths[5].unlink()
    paths[5].write_bytes(b"not an image")
    cache = image_cache.build(paths, 32, tmp_path / "cache", workers=2)
    assert cache.failed == {5: "image_not_decodable"} and "image_5_product_5.jpg" in cache.messages[5]
    assert (cache.infos[0].format, cache.infos[0].width, cache.infos[0].height) == ("JPEG", 500, 500)
    rows = np.array([39, 0, 7, 7])
    np.testing.assert_array_equal(cache.read(rows), np.stack([decode_image(paths[r].read_bytes(), 32) for r in rows]))
    assert not cache.read(np.array([5])).any()
    assert np.load(cache.path, mmap_mode="r").shape == (40, 32, 32, 3)  # a valid .npy file
    again = image_cache.build(paths, 32, tmp_path / "cache", workers=2)
    assert again.path == cache.path and again.failed == cache.failed and again.infos == cache.infos  # reused


def test_an_interrupted_build_is_not_reused(tmp_path):
    paths = photos(tmp_path / "images", 10)
    key = image_cache.cache_key(paths, 32)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f"images-32px-{key}.partial").write_bytes(b"half")
    cache = image_cache.build(paths, 32, tmp_path / "cache", workers=2)
    assert cache.read(np.array([9])).any()


PEAK_RSS = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    import numpy as np
    from training_job.data import image_cache
    from training_job.training.inputs import batches
    from tests.test_image_cache import photos
    rows, workdir = int(sys.argv[1]), Path(sys.argv[2])
    paths = photos(workdir / "images", rows)
    cache = image_cache.build(paths, 128, workdir / "cache", workers=2)
    texts = np.array(["un produit"] * rows, dtype=object)
    labels = np.zeros(rows, dtype=np.int32)
    seen = sum(len(y) for _, y in batches(texts, cache, np.arange(rows), labels, 32, ("text", "image"), shuffle_seed=0))
    assert seen == rows
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
""")


@pytest.mark.process
@pytest.mark.parametrize("rows", [2000])
def test_peak_memory_does_not_grow_with_the_number_of_images(tmp_path, rows):
    """One pass over 200 and over 2,000 images at 128 px (2,000 decoded = 98 MB): the peak RSS of
    the process must not grow by anything near that. Fails if decoded images are held in one array."""
    def peak(n: int) -> int:
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(n), str(tmp_path / str(n))], cwd=REPO,
                              capture_output=True, text=True, timeout=600,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.split()[-1])

    small, large = peak(200), peak(rows)
    decoded = (rows - 200) * 128 * 128 * 3
    print(f"peak RSS {small / 1e6:.0f} MB for 200 images, {large / 1e6:.0f} MB for {rows} ({decoded / 1e6:.0f} MB decoded)")
    assert large - small < decoded / 3
