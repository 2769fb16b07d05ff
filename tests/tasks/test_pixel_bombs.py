"""Memory is bounded by what the model sees, not by what a file claims: a label batch with a 30000 x 30000 PNG of
0.9 MB among good tiles, in a process of its own whose peak memory is measured."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.pipeline_data import write_collection

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def zero_png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of width x height black pixels, made in a fraction of a second whatever its size:
    identical blocks of rows compress to identical bytes after a full flush, so one block is compressed and
    repeated, and the Adler-32 of n zero bytes is ``(n mod 65521) << 16 | 1``."""
    row = bytes(width + 1)  # filter byte 0, then the pixels
    rows_per_block = max(1, (4 << 20) // len(row))
    blocks, rest = divmod(height, rows_per_block)
    comp = zlib.compressobj(9)
    stream = b""
    if blocks:
        block = row * rows_per_block
        head = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
        unit = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH) if blocks > 1 else b""
        stream = head + unit * (blocks - 1)
    stream += (comp.compress(row * rest) + comp.flush())[:-4]
    stream += struct.pack(">I", ((len(row) * height) % 65521) << 16 | 1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def test_zero_png_is_a_valid_png():
    for width, height in [(3000, 5000), (777, 5001), (40, 3)]:
        data = zero_png(width, height)
        (length,) = struct.unpack(">I", data[33:37])
        assert zlib.decompress(data[41:41 + length]) == bytes((width + 1) * height)  # checks the Adler-32 too
        with Image.open(__import__("io").BytesIO(data)) as img:
            assert img.size == (width, height) and not np.asarray(img).any()


# The peak is the process's own VmHWM: getrusage's ru_maxrss in a child starts at its parent's peak (Linux keeps
# the pre-exec high-water mark), so it would measure pytest, not the batch.
_RUN = """
import json, sys
from tasks.labelling import LabelJob, label_batch
from tasks.options import RunOptions
from tasks.sources import list_images
from tests.pipeline_data import concept_set

root, cache, archive = sys.argv[1:4]
labeller = concept_set(root, cache=cache)
job = LabelJob(archive, f"{root}/tiles", RunOptions(cache=cache, workers=1))
outcomes = label_batch.fn(list_images.fn(f"{root}/tiles/*"), labeller, job)
peak_kb = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
print(json.dumps({"peak_mb": peak_kb / 1024,
                  "outcomes": {o.uri.rsplit("/", 1)[1]: [o.status, o.reason] for o in outcomes}}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")
def test_a_pixel_bomb_fails_alone_and_memory_stays_bounded(tmp_path):
    """The old decode of the 30000 x 30000 PNG needed ~12 bytes a pixel (10.8 GB). Here it is refused from its
    header (the limit: 256 x the 128-px input), a 1200 x 900 JPEG within the limit is decoded reduced and its
    mask written at its own size, and the other tiles are labelled, with a peak under 1.5 GB."""
    root = str(tmp_path / "lake")
    write_collection(root, tiles=1, size=64, concepts=("roof",))
    (tmp_path / "lake" / "tiles" / "bomb.png").write_bytes(zero_png(30000, 30000))
    gradient = np.linspace(0, 255, 1200, dtype=np.uint8)[None, :, None].repeat(900, 0).repeat(3, 2)
    Image.fromarray(gradient).save(tmp_path / "lake" / "tiles" / "large.jpg", quality=90)
    archive = str(tmp_path / "masks.zarr")
    done = subprocess.run(
        [sys.executable, "-c", _RUN, root, str(tmp_path / "cache"), archive], capture_output=True, text=True,
        cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_LOGGING_LEVEL": "WARNING"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    outcomes = result["outcomes"]
    status, reason = outcomes.pop("bomb.png")
    assert status == "failed" and "bomb.png" in reason and "30000x30000" in reason and "--max-image-pixels" in reason
    assert {name: s for name, (s, _) in outcomes.items()} == {"large.jpg": "labelled", "tile_000.png": "labelled"}
    assert result["peak_mb"] < 1536, f"peak {result['peak_mb']:.0f} MB"
    print(f"peak RSS of the batch's process: {result['peak_mb']:.0f} MB")

    from dinoseg_core.io.archive import MaskArchive, image_key

    stored = MaskArchive.open(archive, mode="r")
    assert stored.load("roof", image_key(f"{root}/tiles/large.jpg", f"{root}/tiles")).mask.shape == (900, 1200)
