"""A labelling run over a STAC catalog whose items keep one single-band COG per band (Sentinel-2 style): the bands
chosen by name are stacked as one scene (a GDAL VRT), and its masks are pixel-equal to those of the same bands as
one 3-band GeoTIFF; a rewritten band relabels its item."""

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from dinoseg_core.geo.synthetic import write_synthetic_geotiff
from dinoseg_core.io import stac
from dinoseg_core.io.archive import MaskArchive
from flows.labelling import label_collection
from tests.pipeline_data import TINY, write_collection

PER_BAND = (("B04", "red", 3), ("B03", "green", 2), ("B02", "blue", 1))  # key, common name, band of the scene


def _item(item_id: str, assets: dict) -> dict:
    item = pystac.Item(id=item_id, geometry={"type": "Point", "coordinates": [15, 45]}, bbox=[15, 45, 15, 45],
                       datetime=dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc), properties={})
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item.to_dict(include_self_link=False)


def _catalogs(root: Path) -> tuple[str, str]:
    """root/bands.json (items with B04, B03, B02 single-band COGs) and root/rgb.json (the same bands as one
    3-band GeoTIFF, the 'visual' asset), for two generated scenes."""
    per_band, rgb = [], []
    for i in range(2):
        write_synthetic_geotiff(root / f"s{i}.tif", (128, 160), tile=128, seed=i)
        with rasterio.open(root / f"s{i}.tif") as scene:
            profile, data = scene.profile, scene.read()
        profile.update(count=1)
        assets = {}
        for key, common, band in PER_BAND:
            (root / f"s{i}").mkdir(exist_ok=True)
            with rasterio.open(root / f"s{i}" / f"{key}.tif", "w", **profile) as out:
                out.write(data[band - 1], 1)
            assets[key] = pystac.Asset(f"s{i}/{key}.tif", media_type=pystac.MediaType.COG,
                                       extra_fields={"eo:bands": [{"name": key, "common_name": common}]})
        per_band.append(_item(f"s{i}", assets))
        profile.update(count=3)
        with rasterio.open(root / f"rgb{i}.tif", "w", **profile) as out:
            out.write(data[[band - 1 for _, _, band in PER_BAND]])
        rgb.append(_item(f"s{i}", {"visual": pystac.Asset(f"rgb{i}.tif", media_type=pystac.MediaType.COG)}))
    for name, features in (("bands", per_band), ("rgb", rgb)):
        (root / f"{name}.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return str(root / "bands.json"), str(root / "rgb.json")


@pytest.mark.slow
def test_per_band_assets_label_as_the_same_bands_in_one_geotiff_and_a_changed_band_relabels(tmp_path, monkeypatch):
    monkeypatch.setattr(stac, "VRT_DIR", str(tmp_path / "vrt"))
    write_collection(str(tmp_path), tiles=0, concepts=("roof",))
    bands, rgb = _catalogs(tmp_path)
    run = {"device": "cpu", "cache": str(tmp_path / "cache")}

    def label(images: str, archive: str, asset: str):
        state = label_collection(references=str(tmp_path / "refs.yaml"), images=images, archive=archive,
                                 backbone=TINY, scene={"overlap": 32}, run={**run, "stac_asset": asset},
                                 return_state=True)
        assert state.is_completed(), state.message
        return state.result()

    assert label(bands, str(tmp_path / "bands.zarr"), "red,green,blue")["labelled"] == 2
    assert label(rgb, str(tmp_path / "rgb.zarr"), "visual")["labelled"] == 2
    stacked, whole = (MaskArchive.open(str(tmp_path / f"{n}.zarr"), mode="r") for n in ("bands", "rgb"))
    pairs = [[(key, archive.mask_record("roof", key)) for key in sorted(k for _, k in archive.list_masks("roof"))]
             for archive in (stacked, whole)]
    assert [len(p) for p in pairs] == [2, 2]
    for i, ((key, record), (other, want)) in enumerate(zip(*pairs)):
        mask = stacked.read_mask("roof", key)
        np.testing.assert_array_equal(mask, whole.read_mask("roof", other))
        assert record["spatial:transform"] == want["spatial:transform"]
        vrt = record["source_uri"]  # the stack: a VRT naming the item's band files
        assert vrt.endswith(f"s{i}.vrt") and f"s{i}/B04.tif" in Path(vrt).read_text()
        assert key.startswith(f"s{i}.vrt-")  # the key names the item
    assert any(whole.read_mask("roof", key).any() for key, _ in pairs[1])  # something was labelled

    assert label(bands, str(tmp_path / "bands.zarr"), "red,green,blue")["skipped"] == 2  # nothing changed
    with rasterio.open(tmp_path / "s1" / "B03.tif", "r+") as band:  # one band of s1 rewritten
        band.write(band.read(1)[::-1], 1)
    again = label(bands, str(tmp_path / "bands.zarr"), "red,green,blue")
    assert (again["labelled"], again["skipped"]) == (1, 1)
