"""Hostile inputs among good ones, end to end through `dinoseg label` (issue 10, items 1 and 2): zero-byte,
truncated, text named .png, 1x1, and a pixel bomb (a 6000 x 6000 PNG of zeros: 36 M pixels, about 430 MB
decoded as float RGB, over the tile limit of 256 x the model input side squared, 4.2 M at 128 px). Each fails
alone with a reason naming it; the pixel bomb is refused from its header (nothing decoded, memory stays flat);
the good tiles are labelled as an undisturbed run labels them; every record is sound."""

from __future__ import annotations

import resource
import shutil
import struct
import zlib

import pytest

from dinoseg.cli import main
from tests.reliability.conftest import label_args
from tests.reliability.helpers import verify_archive

pytestmark = pytest.mark.integration


def png_header_bomb(width: int, height: int) -> bytes:
    """A well-formed PNG that declares ``width x height`` grey pixels and holds the first rows of zeros (a
    decoder that trusts the header allocates width x height bytes before noticing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))



def test_hostile_inputs_fail_alone_named_and_the_good_tiles_are_labelled(api_url, lake, clean, tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "lake"
    shutil.copytree(lake, root, ignore=shutil.ignore_patterns("cache"))
    tiles = root / "tiles"
    good = (tiles / "tile_000.png").read_bytes()
    hostile = {
        "zero.png": b"",
        "truncated.png": good[: len(good) // 2],
        "text.png": b"this is a text file, not a PNG\n",
        "bomb.png": png_header_bomb(6000, 6000),
    }
    for name, data in hostile.items():
        (tiles / name).write_bytes(data)
    Image.new("RGB", (1, 1), (200, 100, 50)).save(tiles / "one.png")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    code = main(label_args(root, str(tmp_path / "a.zarr"), "--cache", str(tmp_path / "cache")))
    err = capsys.readouterr().err
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert code == 1, err
    failed = {line.split(": ", 2)[1].rsplit("/", 1)[-1]: line.split(": ", 2)[2] for line in err.splitlines()
              if line.strip().startswith("failed: ")}
    assert sorted(failed) == sorted([*hostile, "one.png"]), err
    for name, reason in failed.items():
        assert reason and "Traceback" not in reason, (name, reason)
    assert "6000x6000" in failed["bomb.png"] and "nothing was decoded" in failed["bomb.png"], failed["bomb.png"]
    assert growth_mb < 300, f"peak memory grew by {growth_mb:.0f} MB: the bomb was decoded"
    assert verify_archive(str(tmp_path / "a.zarr")) == clean
