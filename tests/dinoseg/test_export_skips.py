"""``dinoseg export`` over a concept whose masks are not all georeferenced: the others are exported, each skipped
mask is named with its reason; masks in different CRSs need --to-crs."""

from __future__ import annotations

import json

import numpy as np

from dinoseg.cli import main as cli
from dinoseg_core.io.archive import MaskArchive

UTM = {"spatial:transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0], "proj:code": "EPSG:32633"}


def _write(archive: MaskArchive, uri: str, geo: dict) -> None:
    mask = np.zeros((32, 32), bool)
    mask[8:20, 8:20] = True
    attrs = {"source_uri": uri, "source_sha256": "0" * 64, "backbone": "random:tiny@0", "backbone_fingerprint": "f",
             "config": {}, "reference_set_hash": "r", **geo}
    archive.write_mask("roof", uri.rsplit("/", 1)[-1], mask, attrs=attrs)


def test_a_scene_without_a_crs_is_skipped_and_named_not_failing_the_concept(tmp_path, capsys):
    archive = MaskArchive.open(str(tmp_path / "a.zarr"), mode="a")
    _write(archive, "/lake/scene_a.tif", UTM)
    _write(archive, "/lake/no_crs.tif", {})  # a GeoTIFF without a CRS: its mask has no georeferencing
    out = tmp_path / "roofs.geojson"
    code = cli(["export", "--archive", str(tmp_path / "a.zarr"), "--concept", "roof", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped /lake/no_crs.tif: the mask has no georeferencing" in err
    assert "from 1 mask(s)" in err and "skipped 1" in err
    features = json.loads(out.read_text())["features"]
    assert [f["properties"]["source_uri"] for f in features] == ["/lake/scene_a.tif"]
    x, y = features[0]["geometry"]["coordinates"][0][0]
    assert 500000 <= x <= 500320 and 4999680 <= y <= 5000000  # the scene's UTM grid, not pixels

    # two CRSs in one file need a reprojection; with it both are exported
    _write(archive, "/lake/scene_b.tif", {**UTM, "proj:code": "EPSG:32632"})
    assert cli(["export", "--archive", str(tmp_path / "a.zarr"), "--concept", "roof", "--out", str(out)]) == 2
    assert "EPSG:32632" in capsys.readouterr().err
    assert cli(["export", "--archive", str(tmp_path / "a.zarr"), "--concept", "roof", "--out", str(out),
                "--to-crs", "EPSG:4326"]) == 0
    assert len(json.loads(out.read_text())["features"]) == 2
