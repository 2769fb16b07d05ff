"""``dinoseg preview``: overlays named after their sources, outlined in a colour that contrasts with the image,
above a legend strip."""

import numpy as np
from PIL import Image

from dinoseg.cli import main as cli
from dinoseg_core.io import imageio
from dinoseg_core.io.archive import MaskArchive, image_key

PROVENANCE = {"source_sha256": "0" * 64, "backbone": "random:tiny@0", "backbone_fingerprint": "f",
              "config": {}, "reference_set_hash": "r"}


def test_preview_names_outlines_and_legend(tmp_path, capsys):
    roofs = np.zeros((64, 80, 3), np.float32)
    roofs[...] = (0.7, 0.25, 0.2)  # red roofs: the outline must not be red
    mask = np.zeros((64, 80), bool)
    mask[16:48, 20:60] = True
    archive = MaskArchive.open(str(tmp_path / "a.zarr"), mode="a")
    for folder in ("north", "south"):  # two sources with the same stem
        url = str(tmp_path / folder / "tile_00.png")
        imageio.write_image_png(url, roofs)
        archive.write_mask("roof", image_key(url, str(tmp_path)), mask, {**PROVENANCE, "source_uri": url})
    out = tmp_path / "pv"
    assert cli(["preview", "--archive", str(tmp_path / "a.zarr"), "--concept", "roof", "--out", str(out)]) == 0
    assert "wrote 2 overlay(s)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["tile_00-2.png", "tile_00.png"]
    panel = np.asarray(Image.open(out / "tile_00.png").convert("RGB"))
    assert panel.shape[0] > 64 + 30  # the legend strip below the image
    cyan = imageio.contrast_color(roofs)
    assert cyan == (0.0, 1.0, 1.0)
    np.testing.assert_array_equal(panel[16, 30], [0, 255, 255])  # the outline in the contrast colour
    np.testing.assert_array_equal(panel[0, 0], [178, 64, 51])  # outside: the image
    strip = panel[64:]
    assert np.all(strip == [0, 255, 255], axis=2).any() and (strip == 255).all(axis=2).sum() > 50
