"""STAC in and out: a generated static catalog (no network) read as a collection, on local disk and on S3 (moto);
``dinoseg export --format stac`` writing label Items validated offline against the STAC schemas (pystac's copies)
and the label extension's (tests/data/stac)."""

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from jsonschema import Draft7Validator
from pystac.validation.local_validator import get_local_schema_cache
from referencing import Registry, Resource

from dinoseg.cli import main as cli
from dinoseg_core.errors import InputError
from dinoseg_core.geo import geo_attrs
from dinoseg_core.io import storage
from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.io.raster import open_raster
from dinoseg_core.io.stac import LABEL_EXTENSION, is_stac, read_stac_images
from tasks.sources import WorkItem, input_prefix, list_images
from tests.dinoseg_core.geo_data import TRANSFORM, band_stack, write_geotiff

LABEL_SCHEMA = Path(__file__).parents[2] / "data" / "stac" / "label-v1.0.1.schema.json"
ITEM_SCHEMA = f"https://schemas.stacspec.org/v{pystac.get_stac_version()}/item-spec/json-schema/item.json"
EO_BANDS = [{"name": "B02", "common_name": "blue"}, {"name": "B03", "common_name": "green"},
            {"name": "B04", "common_name": "red"}, {"name": "B08", "common_name": "nir"}]


def _item(item_id: str, assets: dict[str, pystac.Asset]) -> pystac.Item:
    item = pystac.Item(id=item_id, geometry={"type": "Point", "coordinates": [15.0, 45.0]}, bbox=[15, 45, 15, 45],
                       datetime=dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc), properties={})
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def _scenes(folder: Path, n: int = 2) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_geotiff(folder / f"scene_{i}.tif", band_stack(32, 48, count=4, seed=i)) for i in range(n)]


def _catalog(root: Path, tifs: list[str]) -> str:
    """root/stac/catalog.json -> collection -> items with a 4-band 'analytic' COG (eo:bands), a 'visual' one and a
    thumbnail, asset hrefs relative to the item files."""
    catalog = pystac.Catalog(id="lake", description="generated")
    extent = pystac.Extent(pystac.SpatialExtent([[15, 45, 15, 45]]), pystac.TemporalExtent([[None, None]]))
    collection = pystac.Collection(id="scenes", description="generated", extent=extent)
    catalog.add_child(collection)
    for i, tif in enumerate(tifs):
        collection.add_item(_item(f"scene-{i}", {
            "analytic": pystac.Asset(tif, media_type=pystac.MediaType.COG, roles=["data"],
                                     extra_fields={"eo:bands": EO_BANDS}),
            "visual": pystac.Asset(tif, media_type=pystac.MediaType.COG, roles=["visual"]),
            "thumbnail": pystac.Asset(tif.replace(".tif", ".png"), media_type=pystac.MediaType.PNG,
                                      roles=["thumbnail"]),
        }))
    catalog.normalize_hrefs(str(root / "stac"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return str(root / "stac" / "catalog.json")


def test_a_static_catalog_gives_one_image_per_item_by_asset_or_band_names(tmp_path):
    tifs = _scenes(tmp_path / "data")
    url = _catalog(tmp_path, tifs)
    assert is_stac(url) and not is_stac(f"{tmp_path}/*.json") and not is_stac(tifs[0])
    first = json.loads((tmp_path / "stac" / "scenes" / "scene-0" / "scene-0.json").read_text())
    assert first["assets"]["analytic"]["href"].startswith("../")  # relative hrefs are resolved against the item
    visual = read_stac_images(url)
    assert [(i.item_id, i.url, i.bands, i.raster) for i in visual] == [
        ("scene-0", tifs[0], None, True), ("scene-1", tifs[1], None, True)]
    assert [i.bands for i in read_stac_images(url, "red,green,blue")] == [(3, 2, 1)] * 2
    assert [i.bands for i in read_stac_images(url, "B08")] == [(4,)] * 2  # a band name of one asset: grey
    assert read_stac_images(url, "analytic")[0].bands is None
    items = list_images.fn(url, None, "red,green,blue")
    assert items == [WorkItem(tifs[0], None, "scene", (3, 2, 1)), WorkItem(tifs[1], None, "scene", (3, 2, 1))]
    assert input_prefix(url, items) == str(tmp_path / "stac")


def test_stac_errors_name_the_item_the_asset_and_the_fix(tmp_path):
    tifs = _scenes(tmp_path / "data", 1)
    url = _catalog(tmp_path, tifs)
    with pytest.raises(InputError, match=r"scene-0.*no asset 'swir'.*analytic, thumbnail, visual"):
        read_stac_images(url, "swir")
    with pytest.raises(InputError, match="1 band name.*or 3"):
        read_stac_images(url, "red,green")
    with pytest.raises(InputError, match="is not one .a .json URL.; leave stac_asset out"):
        list_images.fn(f"{tmp_path}/data/*.tif", None, "visual")
    per_band = tmp_path / "per_band.json"  # per-band assets that are not single-band: refused, naming one
    item = _item("s2", {b: pystac.Asset(tifs[0], media_type=pystac.MediaType.COG) for b in ("red", "green", "blue")})
    per_band.write_text(json.dumps({"type": "FeatureCollection", "features": [item.to_dict()]}))
    with pytest.raises(InputError, match="item 's2': asset 'red' has 4 bands; stacking per-band assets takes single"):
        read_stac_images(str(per_band), "red,green,blue")
    with pytest.raises(InputError, match="several image asset"):  # no 'visual', several images: choose one
        read_stac_images(str(per_band))
    elsewhere = tmp_path / "elsewhere.json"  # as for a manifest: assets stay on the catalog's storage unless allowed
    item = _item("far", {"visual": pystac.Asset("s3://other-bucket/x.tif", media_type=pystac.MediaType.COG)})
    elsewhere.write_text(json.dumps({"type": "FeatureCollection", "features": [item.to_dict()]}))
    with pytest.raises(InputError, match="s3://other-bucket/x.tif.*allow-reference-url"):
        list_images.fn(str(elsewhere))
    assert [i.url for i in list_images.fn(str(elsewhere), None, None, ["s3://other-bucket/"])] == [
        "s3://other-bucket/x.tif"]
    (tmp_path / "other.json").write_text('{"type": "Topology"}')
    with pytest.raises(InputError, match="not a STAC document"):
        read_stac_images(str(tmp_path / "other.json"))


def test_an_item_collection_on_s3_lists_s3_scenes(s3_server, tmp_path):
    so = s3_server["storage_options"]
    bucket = s3_server["make_bucket"]()
    tifs = _scenes(tmp_path)
    features = []
    for i, tif in enumerate(tifs):
        storage.write_bytes(f"{bucket}/search/scenes/{i}/image", Path(tif).read_bytes(), so)  # no suffix: the type says
        asset = pystac.Asset(f"scenes/{i}/image", media_type=pystac.MediaType.COG, extra_fields={"eo:bands": EO_BANDS})
        features.append(_item(f"scene-{i}", {"analytic": asset}).to_dict(include_self_link=False))
    url = f"{bucket}/search/items.json"
    storage.write_bytes(url, json.dumps({"type": "FeatureCollection", "features": features}).encode(), so)
    items = list_images.fn(url, so, "nir")
    assert items == [WorkItem(f"{bucket}/search/scenes/{i}/image", None, "scene", (4,)) for i in range(2)]
    items = list_images.fn(url, so, None)  # the only image asset
    assert [i.url for i in items] == [f"{bucket}/search/scenes/{i}/image" for i in range(2)]
    assert storage.read_bytes(items[0].url, so) == Path(tifs[0]).read_bytes()


def _validate(item_json: dict) -> None:
    registry = Registry().with_resources(
        [(uri, Resource.from_contents(schema)) for uri, schema in get_local_schema_cache().items()])
    label = json.loads(LABEL_SCHEMA.read_text())
    for schema in (get_local_schema_cache()[ITEM_SCHEMA], label):
        errors = sorted(Draft7Validator(schema, registry=registry).iter_errors(item_json), key=str)
        assert not errors, [e.message for e in errors]


def test_export_stac_writes_label_items_that_validate_offline(tmp_path, capsys):
    scene = write_geotiff(tmp_path / "scene.tif", band_stack(96, 128, count=3))
    archive = MaskArchive.open(str(tmp_path / "a.zarr"), mode="a")
    mask = np.zeros((96, 128), bool)
    mask[10:60, 20:90] = True
    provenance = {"source_sha256": "0" * 64, "backbone": "random:tiny@0", "backbone_fingerprint": "f",
                  "config": {"tau": 0.8}, "reference_set_hash": "r"}
    archive.write_mask("roof", "scene", mask, {**provenance, "source_uri": scene, **geo_attrs(open_raster(scene))})
    archive.write_mask("roof", "tile", np.ones((8, 8), bool), {**provenance, "source_uri": f"{tmp_path}/t.png"})
    out = tmp_path / "stac"
    assert cli(["export", "--format", "stac", "--polygons", "--archive", str(tmp_path / "a.zarr"),
                "--concept", "roof", "--out", str(out)]) == 0
    assert "2 label item(s)" in capsys.readouterr().err

    catalog = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = {item.id: item for item in catalog.get_items(recursive=True)}
    assert set(items) == {"scene-roof", "t-roof"}
    broken = json.loads(Path(items["scene-roof"].get_self_href()).read_text())
    broken["properties"]["label:type"] = "mask"
    with pytest.raises(AssertionError, match="'mask' is not one of"):  # the schemas do check
        _validate(broken)
    for item in items.values():
        _validate(json.loads(Path(item.get_self_href()).read_text()))
        assert LABEL_EXTENSION in item.stac_extensions
        props = item.properties
        assert props["label:type"] == "raster" and props["label:properties"] is None
        assert props["label:tasks"] == ["segmentation"] and props["label:methods"] == ["automated"]
        assert props["label:classes"] == [{"name": None, "classes": [0, 255]}]
    georef = items["scene-roof"]
    west, south, east, north = georef.bbox  # EPSG:32633 around (500 km E, 5000 km N) is near 15 E, 45 N
    assert 14.9 < west < east < 15.1 and 45.0 < south < north < 45.2
    with rasterio.open(georef.assets["labels"].get_absolute_href()) as cog:
        np.testing.assert_array_equal(cog.read(1), np.where(mask, 255, 0))
        assert cog.crs.to_epsg() == 32633
    polygons = json.loads(Path(georef.assets["polygons"].get_absolute_href()).read_text())
    assert len(polygons["features"]) == 1
    assert [link.get_absolute_href() for link in georef.links if link.rel == "source"] == [scene]
    tile = items["t-roof"]  # no georeferencing: no geometry, the mask is the Zarr record
    assert tile.geometry is None and tile.assets["labels"].media_type == "application/vnd+zarr"
    assert tile.assets["labels"].href.startswith(str(tmp_path / "a.zarr"))
    assert "polygons" not in tile.assets


def _per_band_catalog(root: Path, stacks: list[np.ndarray], names=("red", "green", "blue")) -> tuple[str, list]:
    """An ItemCollection whose items hold one single-band COG per band (Sentinel-2 style: assets B04, B03, B02 with
    one eo:band each, common names red, green, blue), from the (3, H, W) ``stacks``."""
    features, files = [], []
    for i, stack in enumerate(stacks):
        assets, paths = {}, []
        (root / f"s{i}").mkdir(parents=True, exist_ok=True)
        for key, common, band in zip(("B04", "B03", "B02"), names, stack):
            paths.append(write_geotiff(root / f"s{i}" / f"{key}.tif", band))
            assets[key] = pystac.Asset(f"s{i}/{key}.tif", media_type=pystac.MediaType.COG, roles=["data"],
                                       extra_fields={"eo:bands": [{"name": key, "common_name": common}]})
        features.append(_item(f"s2-{i}", assets).to_dict(include_self_link=False))
        files.append(paths)
    url = root / "items.json"
    url.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return str(url), files


def test_per_band_assets_are_stacked_as_one_scene_pixel_equal_to_a_stacked_geotiff(tmp_path, monkeypatch):
    from dinoseg_core.io import stac
    from dinoseg_core.io.raster import read_window

    monkeypatch.setattr(stac, "VRT_DIR", str(tmp_path / "vrt"))
    stacks = [band_stack(40, 56, count=3, seed=i) for i in range(2)]
    url, files = _per_band_catalog(tmp_path / "cat", stacks)
    images = read_stac_images(url, "red,green,blue")
    assert read_stac_images(url, "B04,B03,B02") == images  # asset keys or band (common) names alike
    assert [(i.item_id, i.bands, i.raster, i.sources) for i in images] == [
        (f"s2-{i}", (1, 2, 3), True, tuple(files[i])) for i in range(2)]
    items = list_images.fn(url, None, "red,green,blue")
    assert [(w.url, w.kind, w.bands) for w in items] == [(i.url, "scene", (1, 2, 3)) for i in images]
    assert input_prefix(url, items) == stac.vrt_folder(url) == str(Path(images[0].url).parent)  # keys: s2-0.vrt...
    assert input_prefix(url, list_images.fn(url, None, "green")) == str(tmp_path / "cat")
    for image, stack in zip(images, stacks):
        whole = write_geotiff(tmp_path / f"{image.item_id}.tif", stack)
        vrt, tif = open_raster(image.url, image.bands), open_raster(whole, (1, 2, 3))
        assert (vrt.crs, vrt.transform, vrt.shape, vrt.stretch, vrt.nodata) == (
            tif.crs, tif.transform, tif.shape, tif.stretch, tif.nodata)
        for got, want in zip(read_window(vrt), read_window(tif)):
            np.testing.assert_array_equal(got, want)
    grey = read_stac_images(url, "green")[0]  # one name of a single-band asset: that file, grey
    assert (grey.url, grey.bands, grey.sources) == (files[0][1], (1,), ())

    before = Path(images[0].url).read_bytes()
    write_geotiff(files[0][1], stacks[1][1])  # a band rewritten: the VRT's bytes (hence its sha256) change
    after = read_stac_images(url, "red,green,blue")[0]
    assert after.url == images[0].url and Path(after.url).read_bytes() != before
    assert Path(read_stac_images(url, "red,green,blue")[0].url).read_bytes() == Path(after.url).read_bytes()

    write_geotiff(files[1][2], band_stack(40, 48, count=1)[0])  # another size: refused, naming item and asset
    with pytest.raises(InputError, match=r"item 's2-1': asset 'B02' .*40 px.* not on the grid of 'B04'"):
        read_stac_images(url, "red,green,blue")
    coarse = rasterio.Affine(2 * TRANSFORM.a, 0, TRANSFORM.c, 0, 2 * TRANSFORM.e, TRANSFORM.f)  # 20 m, as B11
    write_geotiff(files[1][2], band_stack(20, 28, count=1)[0], transform=coarse)
    with pytest.raises(InputError, match=r"item 's2-1': asset 'B02' has another resolution.*does not resample"):
        read_stac_images(url, "red,green,blue")
    with pytest.raises(InputError, match="1 band name.*or 3"):
        read_stac_images(url, "red,green")
    write_geotiff(files[1][2], stacks[1][2].astype(np.float32))
    with pytest.raises(InputError, match=r"item 's2-1': asset 'B02' holds float32 pixels, 'B04' uint16"):
        read_stac_images(url, "red,green,blue")


def test_per_band_assets_on_s3_are_stacked_and_read_through_gdal(s3_server, tmp_path, monkeypatch):
    from dinoseg_core.io import stac
    from dinoseg_core.io.raster import read_window

    monkeypatch.setattr(stac, "VRT_DIR", str(tmp_path / "vrt"))
    so = s3_server["storage_options"]
    bucket = s3_server["make_bucket"]()
    stack = band_stack(40, 56, count=3)
    local, files = _per_band_catalog(tmp_path / "cat", [stack])
    for path in files[0]:
        storage.write_bytes(f"{bucket}/cat/s0/{Path(path).name}", Path(path).read_bytes(), so)
    url = f"{bucket}/cat/items.json"
    storage.write_bytes(url, Path(local).read_bytes(), so)
    (item,) = list_images.fn(url, so, "red,green,blue")
    assert "/vsis3/" + f"{bucket}/cat/s0/B04.tif"[len("s3://"):] in Path(item.url).read_text()
    vrt, tif = open_raster(item.url, item.bands, so), open_raster(write_geotiff(tmp_path / "whole.tif", stack))
    for got, want in zip(read_window(vrt), read_window(tif)):
        np.testing.assert_array_equal(got, want)
    elsewhere = json.loads(Path(local).read_text())  # a band on another bucket: refused before it is opened
    elsewhere["features"][0]["assets"]["B03"]["href"] = "s3://other-bucket/B03.tif"
    storage.write_bytes(url, json.dumps(elsewhere).encode(), so)
    with pytest.raises(InputError, match="s3://other-bucket/B03.tif.*allow-reference-url"):
        list_images.fn(url, so, "red,green,blue")
