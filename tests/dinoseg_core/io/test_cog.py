"""Masks as Cloud-Optimized GeoTIFFs: the writer, and ``dinoseg export --format cog`` from an archive (CRS,
transform, overviews, tags and pixels as in the archive; a mask without georeferencing is skipped)."""

import json

import numpy as np
import pytest
import rasterio

from dinoseg.cli import main as cli
from dinoseg_core.errors import InputError
from dinoseg_core.geo import geo_attrs
from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.io.cog import NODATA, write_cog
from dinoseg_core.io.raster import open_raster
from tests.dinoseg_core.geo_data import TRANSFORM, band_stack, write_geotiff

PROVENANCE = {"source_sha256": "0" * 64, "backbone": "random:tiny@0", "backbone_fingerprint": "f",
              "config": {"tau": 0.8}, "reference_set_hash": "r"}


def _mask(height, width):
    mask = np.zeros((height, width), bool)
    mask[100:700, 50:400] = True
    mask[900:, 1000:] = True  # an object on the last, partial tiles
    return mask


def _archive(tmp_path, height=1100, width=1300):
    """An archive with one georeferenced mask (scene.tif, larger than one 512 px tile) and one plain tile."""
    scene = write_geotiff(tmp_path / "scene.tif", band_stack(height, width, count=1))
    archive = MaskArchive.open(str(tmp_path / "a.zarr"), mode="a")
    mask = _mask(height, width)
    archive.write_mask("roof", "scene", mask, {**PROVENANCE, "source_uri": str(scene),
                                                **geo_attrs(open_raster(scene))})
    archive.write_mask("roof", "tile", np.ones((8, 8), bool), {**PROVENANCE, "source_uri": "tiles/tile_00.png"})
    return archive, mask


def test_export_cog_keeps_grid_pixels_overviews_and_provenance(tmp_path, capsys):
    archive, mask = _archive(tmp_path)
    out = tmp_path / "cogs"
    assert cli(["export", "--format", "cog", "--archive", str(tmp_path / "a.zarr"), "--concept", "roof",
                "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "wrote 1 COG(s)" in err and "skipped tiles/tile_00.png" in err
    assert sorted(p.name for p in out.iterdir()) == ["scene.roof.tif"]  # no temporary file left
    record = archive.mask_record("roof", "scene")
    with rasterio.open(out / "scene.roof.tif") as cog:
        assert cog.crs.to_epsg() == 32633
        assert cog.transform.almost_equals(TRANSFORM)
        assert cog.overviews(1), "no overviews"
        assert cog.block_shapes == [(512, 512)] and cog.nodata == NODATA
        assert cog.compression.name.lower() == "deflate"
        np.testing.assert_array_equal(cog.read(1), np.where(mask, 255, 0))
        tags = cog.tags()
    assert tags["mask_sha256"] == record["mask_sha256"] and tags["source_uri"] == record["source_uri"]
    assert json.loads(tags["config"]) == {"tau": 0.8}
    with rasterio.open(out / "scene.roof.tif") as cog:  # GDAL's own check of the COG layout
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_export_cog_refuses_to_crs(tmp_path, capsys):
    _archive(tmp_path, 64, 96)
    assert cli(["export", "--format", "cog", "--archive", str(tmp_path / "a.zarr"), "--concept", "roof",
                "--out", str(tmp_path / "cogs"), "--to-crs", "EPSG:4326"]) == 2
    assert "--to-crs" in capsys.readouterr().err


def test_write_cog_rejects_a_bool_mask(tmp_path):
    with pytest.raises(InputError, match="uint8"):
        write_cog(str(tmp_path / "m.tif"), np.ones((4, 4), bool), TRANSFORM, "EPSG:32633")
