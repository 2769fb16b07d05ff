"""Georeferenced masks: CF/GeoZarr attributes that rioxarray reads, polygons in the source CRS or EPSG:4326,
GeoJSON / GeoPackage / GeoParquet files, and the CRS round trip raster -> zarr -> GeoJSON."""

import json
import sys

import numpy as np
import pytest
import zarr
from rasterio.transform import Affine

from dinoseg_core.io import storage
from dinoseg_core.errors import InputError, MissingDependencyError
from dinoseg_core.geo import array_to_polygons, export_vectors, geo_attrs, georeference_from_attrs, masks_to_polygons, spatial_ref_attrs
from dinoseg_core.io.raster import open_raster
from dinoseg_core.io.maskwriter import ZarrMaskWriter
from tests.dinoseg_core.geo_data import ORIGIN, RES, TRANSFORM, band_stack, write_geotiff

pyproj = pytest.importorskip("pyproj")
shapely = pytest.importorskip("shapely")


@pytest.fixture
def source(tmp_path):
    return open_raster(write_geotiff(tmp_path / "scene.tif", band_stack(64, 96)))


def _mask():
    mask = np.zeros((64, 96), bool)
    mask[10:20, 30:50] = True  # a 20 x 10 px rectangle
    mask[30:60, 5:35] = True  # a 30 x 30 px square with a 10 x 10 hole
    mask[40:50, 15:25] = False
    return mask


# ------------------------------------------------------------------------------------------ attributes


def test_geo_attrs_are_geozarr_and_cf(source):
    attrs = geo_attrs(source)
    assert attrs["grid_mapping"] == "spatial_ref"
    assert attrs["proj:code"] == "EPSG:32633"
    assert pyproj.CRS.from_wkt(attrs["proj:wkt2"]).to_epsg() == 32633
    assert attrs["spatial:transform"] == [RES, 0.0, ORIGIN[0], 0.0, -RES, ORIGIN[1]]
    assert attrs["spatial:shape"] == [64, 96] and attrs["spatial:dimensions"] == ["y", "x"]
    assert attrs["spatial:bbox"] == [ORIGIN[0], ORIGIN[1] - 64 * RES, ORIGIN[0] + 96 * RES, ORIGIN[1]]
    json.dumps(attrs)  # JSON-able, for zarr attributes and archive records
    ref = spatial_ref_attrs(source)
    assert ref["crs_wkt"] == ref["spatial_ref"] and ref["grid_mapping_name"] == "transverse_mercator"
    assert ref["GeoTransform"] == f"{ORIGIN[0]!r} {RES!r} 0.0 {ORIGIN[1]!r} 0.0 {-RES!r}"
    json.dumps(ref)


@pytest.fixture
def zarr_mask(tmp_path, source):
    url = str(tmp_path / "masks.zarr")
    with ZarrMaskWriter.create(url, source, chunks=32, attributes={"concept": "roof"}) as writer:
        writer(0, 0, _mask())
    return url


def test_rioxarray_opens_the_mask_with_crs_and_transform(zarr_mask, source):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    ds = xr.open_zarr(zarr_mask, consolidated=False)
    mask = ds["mask"]
    assert mask.dtype == np.uint8 and mask.dims == ("y", "x")
    assert mask.rio.crs.to_epsg() == 32633
    assert mask.rio.transform() == source.transform
    assert float(mask.x[0]) == ORIGIN[0] + RES / 2 and float(mask.y[0]) == ORIGIN[1] - RES / 2
    np.testing.assert_array_equal(mask.values > 0, _mask())


def test_rotated_grid_is_placed_by_geotransform(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    rotated = Affine(0.5, 0.1, ORIGIN[0], 0.1, -0.5, ORIGIN[1])
    src = open_raster(write_geotiff(tmp_path / "rot.tif", band_stack(32, 32), transform=rotated))
    url = str(tmp_path / "rot.zarr")
    with ZarrMaskWriter.create(url, src) as writer:
        writer(0, 0, np.ones((32, 32), bool))
    assert "x" not in zarr.open_group(url, mode="r")  # no 1-D coordinates for a rotated grid
    mask = xr.open_zarr(url, consolidated=False)["mask"]
    assert mask.rio.transform() == rotated and mask.rio.crs.to_epsg() == 32633


# ------------------------------------------------------------------------------------------ polygons


def test_polygons_in_the_source_crs_with_holes_and_properties(source):
    records = masks_to_polygons(_mask(), source.transform, source.crs,
                                properties={"source_uri": "s3://b/scene.tif", "concept": "roof"})
    assert len(records) == 2
    by_pixels = {props["pixels"]: (geom, props) for geom, props in records}
    rect, props = by_pixels[200]
    assert props["source_uri"] == "s3://b/scene.tif" and props["concept"] == "roof"
    assert props["area"] == pytest.approx(200 * RES * RES)
    assert rect.bounds == (ORIGIN[0] + 30 * RES, ORIGIN[1] - 20 * RES, ORIGIN[0] + 50 * RES, ORIGIN[1] - 10 * RES)
    ring, _ = by_pixels[800]
    assert len(ring.interiors) == 1


def test_reprojection_to_epsg_4326(source):
    (rect, props), = [r for r in masks_to_polygons(_mask(), source.transform, source.crs, to_crs="EPSG:4326")
                      if r[1]["pixels"] == 200]
    to_wgs84 = pyproj.Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(ORIGIN[0] + 30 * RES, ORIGIN[1] - 10 * RES)
    xs, ys = rect.exterior.coords.xy
    assert min(xs) == pytest.approx(lon, abs=1e-7) and max(ys) == pytest.approx(lat, abs=1e-7)
    assert 14 < lon < 16 and 45 < lat < 46  # UTM 33N around 15 E, 45 N
    assert props["area"] == pytest.approx(200 * RES * RES)  # area stays in the source CRS units
    with pytest.raises(InputError, match="without a CRS"):
        masks_to_polygons(_mask(), source.transform, None, to_crs="EPSG:4326")


def test_crs_round_trip_raster_to_zarr_to_geojson(zarr_mask, source, tmp_path):
    """The mask's coordinates come back out of the archive's attributes, not from the source raster."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    mask = xr.open_zarr(zarr_mask, consolidated=False)["mask"]
    records = masks_to_polygons(mask.values > 0, mask.rio.transform(), mask.rio.crs,
                                properties={"concept": mask.attrs["concept"]})
    out = tmp_path / "roof.geojson"
    export_vectors(records, str(out), crs=mask.rio.crs)
    doc = json.loads(out.read_text())
    assert doc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    rect = next(f for f in doc["features"] if f["properties"]["pixels"] == 200)
    xs = [x for x, _ in rect["geometry"]["coordinates"][0]]
    ys = [y for _, y in rect["geometry"]["coordinates"][0]]
    assert (min(xs), max(ys)) == (ORIGIN[0] + 30 * RES, ORIGIN[1] - 10 * RES)
    assert rect["properties"]["concept"] == "roof"
    # in EPSG:4326 the document is plain RFC 7946 (no crs member)
    export_vectors(masks_to_polygons(mask.values > 0, mask.rio.transform(), mask.rio.crs, to_crs="EPSG:4326"),
                   str(out), crs="EPSG:4326")
    assert "crs" not in json.loads(out.read_text())


def test_archived_attributes_alone_give_the_polygons_their_coordinates(zarr_mask, source):
    """What `dinoseg export` does: no source raster and no rioxarray, only the mask array and its attributes."""
    array = zarr.open_group(zarr_mask, mode="r")["mask"]
    transform, crs = georeference_from_attrs(dict(array.attrs))
    assert transform == source.transform and crs.to_epsg() == 32633
    records = array_to_polygons(array, transform, crs, to_crs="EPSG:4326", block_size=32,
                                properties={"concept": array.attrs["concept"]})
    expected = masks_to_polygons(_mask(), source.transform, source.crs, to_crs="EPSG:4326")
    assert sorted(p["pixels"] for _, p in records) == sorted(p["pixels"] for _, p in expected) == [200, 800]
    with pytest.raises(InputError, match="no georeferencing attributes"):
        georeference_from_attrs({"concept": "roof"})


def test_block_wise_polygons_merge_objects_across_blocks(source):
    mask = np.zeros((300, 400), bool)
    yy, xx = np.mgrid[0:300, 0:400]
    mask |= np.hypot(yy - 150, xx - 200) < 100  # a disk over four 128-px blocks
    mask[10:20, 10:20] = True  # a small square inside one block
    mask[150, 250:300] = False  # a notch, so the disk is not convex
    array = zarr.create_array(store={}, shape=mask.shape, chunks=(64, 64), dtype="uint8")
    array[:] = mask.astype(np.uint8) * 255
    whole = masks_to_polygons(mask, TRANSFORM, "EPSG:32633")
    blocks = array_to_polygons(array, TRANSFORM, "EPSG:32633", block_size=128)
    assert len(blocks) == len(whole) == 2
    big = max(blocks, key=lambda r: r[1]["pixels"])[0]
    reference = max(whole, key=lambda r: r[1]["pixels"])[0]
    assert big.geom_type == "Polygon" and big.symmetric_difference(reference).area == pytest.approx(0, abs=1e-6)


# ------------------------------------------------------------------------------------------ files


def test_geojson_to_any_storage_url(source):
    records = masks_to_polygons(_mask(), source.transform, source.crs, properties={"concept": "roof"})
    url = "memory://geo-export/roof.json"
    assert export_vectors(records, url, crs=source.crs) == "geojson"
    doc = json.loads(storage.read_bytes(url))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 2


@pytest.mark.parametrize("fmt,name", [("gpkg", "roof.gpkg"), ("parquet", "roof.parquet")])
def test_geopackage_and_geoparquet(source, tmp_path, fmt, name):
    geopandas = pytest.importorskip("geopandas")
    pytest.importorskip("pyogrio" if fmt == "gpkg" else "pyarrow")
    records = masks_to_polygons(_mask(), source.transform, source.crs,
                                properties={"source_uri": "s3://b/scene.tif", "concept": "roof"})
    out = tmp_path / name
    assert export_vectors(records, str(out), crs=source.crs) == fmt
    frame = geopandas.read_file(out) if fmt == "gpkg" else geopandas.read_parquet(out)
    assert frame.crs.to_epsg() == 32633 and len(frame) == 2
    assert set(frame["concept"]) == {"roof"} and set(frame["source_uri"]) == {"s3://b/scene.tif"}
    assert sorted(frame["pixels"]) == [200, 800]


def test_missing_geopandas_names_the_pip_line(source, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "geopandas", None)  # import geopandas -> ImportError
    records = masks_to_polygons(_mask(), source.transform, source.crs)
    with pytest.raises(MissingDependencyError, match="pip install geopandas pyogrio"):
        export_vectors(records, str(tmp_path / "x.gpkg"), crs=source.crs)


def test_format_from_extension_or_argument(source, tmp_path):
    records = masks_to_polygons(_mask(), source.transform, source.crs)
    with pytest.raises(InputError, match="cannot tell the vector format"):
        export_vectors(records, str(tmp_path / "roof.shp"))
    with pytest.raises(InputError, match="format='kml'"):
        export_vectors(records, str(tmp_path / "roof.kml"), format="kml")
    assert export_vectors(records, str(tmp_path / "roof.out"), format="GeoJSON", crs=source.crs) == "geojson"


@pytest.mark.integration
def test_georeferenced_mask_and_vectors_on_s3(s3_server, source):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("rioxarray")
    bucket = s3_server["make_bucket"]()
    so = s3_server["storage_options"]
    url = f"{bucket}/archive/scene.zarr"
    with ZarrMaskWriter.create(url, source, storage_options=so, chunks=32) as writer:
        writer(0, 0, _mask())
    mask = xr.open_zarr(url, consolidated=False, storage_options=so)["mask"]
    assert mask.rio.crs.to_epsg() == 32633 and mask.rio.transform() == source.transform
    records = masks_to_polygons(mask.values > 0, mask.rio.transform(), mask.rio.crs, properties={"concept": "roof"})
    export_vectors(records, f"{bucket}/exports/roof.geojson", storage_options=so, crs=mask.rio.crs)
    doc = json.loads(storage.read_bytes(f"{bucket}/exports/roof.geojson", so))
    assert len(doc["features"]) == 2
