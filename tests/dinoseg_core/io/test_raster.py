"""GeoTIFF/COG reading: band selection, per-scene stretch, nodata, windows, references, bad inputs, S3."""

import re

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling

from dinoseg_core.errors import ImageDecodeError, InputError, ObjectNotFoundError
from dinoseg_core.geo import geo_attrs
from dinoseg_core.io import raster, storage
from dinoseg_core.io.raster import (
    Window,
    gdal_env_options,
    open_raster,
    read_overview,
    read_reference,
    read_window,
    window_bounds_to_pixels,
)
from tests.dinoseg_core.geo_data import TRANSFORM, band_stack, write_geotiff


@pytest.fixture
def stack_tif(tmp_path):
    return write_geotiff(tmp_path / "stack.tif", band_stack())


# ------------------------------------------------------------------------------------------ bands


def test_header_crs_transform_and_default_bands(stack_tif):
    source = open_raster(stack_tif)
    assert (source.width, source.height, source.count, source.dtype) == (96, 64, 4, "uint16")
    assert source.bands == (1, 2, 3)
    assert source.crs.to_epsg() == 32633 and source.transform == TRANSFORM and source.georeferenced
    assert source.nodata == 0.0


def test_band_selection_is_one_based_and_ordered(stack_tif):
    data = band_stack()
    source = open_raster(stack_tif, bands=(4, 3, 2), radiometry="fixed:0,65535")
    image, valid = read_window(source)
    assert image.shape == (64, 96, 3) and image.dtype == np.float32 and valid.all()
    for channel, band in enumerate((4, 3, 2)):
        np.testing.assert_allclose(image[..., channel], data[band - 1] / 65535.0, rtol=1e-6)


def test_single_band_is_replicated_to_grey(stack_tif):
    image, _ = read_window(open_raster(stack_tif, bands=(2,)))
    assert image.shape == (64, 96, 3)
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    assert np.array_equal(read_window(open_raster(stack_tif, bands=2))[0], image)


def test_band_out_of_range_names_file_band_and_count(stack_tif):
    with pytest.raises(InputError, match=r"band 5 is out of range for .*stack\.tif, which has 4 bands") as info:
        open_raster(stack_tif, bands=(5, 3, 2))
    assert "1-based" in str(info.value)
    with pytest.raises(InputError, match="band 0 is out of range"):
        open_raster(stack_tif, bands=(0,))


@pytest.mark.parametrize("bands", [(1, 2), (1, 2, 3, 4), ("red", 2, 1), (1.5, 2, 3)])
def test_band_selection_needs_one_or_three_integers(stack_tif, bands):
    with pytest.raises(InputError, match="bands"):
        open_raster(stack_tif, bands=bands)


# ------------------------------------------------------------------------------------------ stretch


def test_percentile_stretch_per_band(tmp_path):
    values = np.arange(100 * 100, dtype=np.uint16).reshape(100, 100) + 1  # 1..10000, uniform
    path = write_geotiff(tmp_path / "ramp.tif", np.stack([values, values * 2 // 2 + 0, values // 2 + 1]))
    source = open_raster(path)
    (low, high), _, (_, high3) = source.stretch
    assert low == pytest.approx(np.percentile(values, 2), rel=0.02)
    assert high == pytest.approx(np.percentile(values, 98), rel=0.02)
    assert high3 == pytest.approx(high / 2, rel=0.02)  # each band its own stretch
    image, _ = read_window(source)
    assert image.min() == 0.0 and image.max() == 1.0
    assert (image[..., 0] == 0.0).mean() == pytest.approx(0.02, abs=0.01)  # 2 % clipped at each end
    assert (image[..., 0] == 1.0).mean() == pytest.approx(0.02, abs=0.01)


def test_stretch_is_computed_from_the_overview_not_the_full_scene(tmp_path):
    path = tmp_path / "ovr.tif"
    base = np.full((3, 256, 256), 1000, np.uint16) + np.arange(256, dtype=np.uint16)[None, None, :]
    write_geotiff(path, base)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([4], Resampling.nearest)
    with rasterio.open(path, "r+") as ds:  # change the full-resolution pixels only; the overview keeps 1000..1255
        ds.write(base + 20000)
    source = open_raster(path, sample_size=64)  # 64 px = the 4x overview
    assert all(1000 <= low < high <= 1300 for low, high in source.stretch)
    # and a larger sample reads the full-resolution pixels
    assert all(low >= 21000 for low, _ in open_raster(path, sample_size=256).stretch)


def test_windows_share_the_scene_stretch(stack_tif):
    source = open_raster(stack_tif, bands=(3, 2, 1))
    whole, _ = read_window(source)
    part, _ = read_window(source, Window(40, 8, 32, 24))
    np.testing.assert_array_equal(part, whole[8:32, 40:72])


def test_uint8_auto_stretch_is_divide_by_255(tmp_path):
    data = np.random.default_rng(1).integers(1, 255, (3, 32, 32)).astype(np.uint8)
    source = open_raster(write_geotiff(tmp_path / "u8.tif", data))
    assert source.stretch == ((0.0, 255.0),) * 3
    np.testing.assert_allclose(read_window(source)[0], np.moveaxis(data, 0, -1) / 255.0, rtol=1e-6)


def test_fixed_radiometry_and_bad_radiometry(stack_tif):
    source = open_raster(stack_tif, bands=(1,), radiometry="fixed:1000,2000")
    image, _ = read_window(source)
    np.testing.assert_allclose(image[..., 0], np.clip((band_stack()[0] - 1000) / 1000, 0, 1), rtol=1e-5)
    for bad in ("gamma", "fixed:2000,1000", "fixed:0,1;0,1", "scene-percentile:98,2", "none"):
        with pytest.raises(InputError, match="radiometry"):
            open_raster(stack_tif, radiometry=bad)


# ------------------------------------------------------------------------------------------ nodata


def test_nodata_pixels_are_invalid_and_zero(tmp_path):
    data = band_stack()
    data[:, :10, :20] = 0  # nodata in every band
    data[1, 30, 30] = 0  # nodata in one selected band only: the pixel is invalid too
    source = open_raster(write_geotiff(tmp_path / "nd.tif", data), bands=(3, 2, 1))
    image, valid = read_window(source)
    assert not valid[:10, :20].any() and not valid[30, 30]
    assert valid.sum() == 64 * 96 - 200 - 1
    assert (image[~valid] == 0).all()
    # the stretch ignores nodata: without that, 0s would drag the low percentile to 0
    assert all(low > 900 for low, _ in source.stretch)


def test_float_nan_is_invalid(tmp_path):
    data = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    data[:, 5, 5] = np.nan
    source = open_raster(write_geotiff(tmp_path / "f.tif", data, nodata=None))
    image, valid = read_window(source)
    assert not valid[5, 5] and valid.sum() == 32 * 32 - 1 and np.isfinite(image).all()


def test_overview_read_is_small_and_masked(tmp_path):
    data = band_stack(256, 512)
    data[:, :128, :] = 0
    source = open_raster(write_geotiff(tmp_path / "big.tif", data))
    image, valid = read_overview(source, 128)
    assert image.shape == (64, 128, 3) and valid.shape == (64, 128)
    assert not valid[:30].any() and valid[34:].all()


# ------------------------------------------------------------------------------------------ windows, references


def test_window_outside_the_scene_is_an_input_error(stack_tif):
    source = open_raster(stack_tif)
    for window in (Window(90, 0, 10, 10), Window(-1, 0, 5, 5), Window(0, 0, 0, 5)):
        with pytest.raises(InputError, match="not inside"):
            read_window(source, window)
    with pytest.raises(InputError, match="Window"):
        read_window(source, (0, 0, 5, 5))


def test_reference_is_a_window_of_a_geotiff_and_its_mask(tmp_path):
    data = band_stack()
    data[:, 0:4, :] = 0  # nodata rows: never part of a reference mask
    labels = np.zeros((64, 96), np.uint8)
    labels[0:20, 10:30] = 1
    image_path = write_geotiff(tmp_path / "img.tif", data)
    mask_path = write_geotiff(tmp_path / "mask.tif", labels, nodata=None)
    image, mask = read_reference(image_path, mask_path, Window(5, 0, 40, 32), bands=(3, 2, 1))
    assert image.shape == (32, 40, 3) and mask.shape == (32, 40)
    assert mask.sum() == 16 * 20 and not mask[:4].any()
    with pytest.raises(InputError, match="empty inside the window"):
        read_reference(image_path, mask_path, Window(50, 30, 40, 32))
    small = write_geotiff(tmp_path / "small_mask.tif", labels[:32], nodata=None)
    with pytest.raises(InputError, match="96x32 px but its image"):
        read_reference(image_path, small)


def test_window_from_map_bounds(stack_tif):
    source = open_raster(stack_tif)
    x0, y0 = TRANSFORM @ (10, 20)
    x1, y1 = TRANSFORM @ (30, 50)
    assert window_bounds_to_pixels(source, x0, y1, x1, y0) == Window(10, 20, 20, 30)


# ------------------------------------------------------------------------------------------ bad inputs


def test_tiff_without_georeferencing(tmp_path):
    path = write_geotiff(tmp_path / "plain.tif", band_stack(), crs=None)
    source = open_raster(path)  # a plain image is fine as long as nothing needs coordinates
    assert not source.georeferenced and read_window(source)[0].shape == (64, 96, 3)
    with pytest.raises(InputError, match=r"plain\.tif has no georeferencing \(a CRS and a geotransform missing\)"):
        open_raster(path, require_georeferencing=True)
    with pytest.raises(InputError, match="no georeferencing"):
        geo_attrs(source)


def test_corrupt_cog_is_named(tmp_path):
    src = write_geotiff(tmp_path / "src.tif", band_stack(512, 512))
    cog = tmp_path / "scene_cog.tif"
    rasterio.shutil.copy(src, cog, driver="COG", compress="deflate", blocksize=128)
    data = cog.read_bytes()
    truncated = tmp_path / "truncated_cog.tif"
    truncated.write_bytes(data[: len(data) * 2 // 3])  # header and overviews intact, full-res tiles cut off
    source = open_raster(truncated, radiometry="fixed:0,65535")  # the header still opens
    with pytest.raises(ImageDecodeError, match=r"truncated_cog\.tif: cannot read window .*corrupt or truncated"):
        read_window(source)
    garbage = tmp_path / "garbage_cog.tif"
    garbage.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    with pytest.raises(ImageDecodeError, match=r"garbage_cog\.tif: not a readable GeoTIFF/COG"):
        open_raster(garbage)
    assert issubclass(ImageDecodeError, InputError)


def test_missing_file(tmp_path):
    with pytest.raises(ObjectNotFoundError, match="nope.tif"):
        open_raster(tmp_path / "nope.tif")
    with pytest.raises(FileNotFoundError):
        open_raster(tmp_path / "nope.tif")


# ------------------------------------------------------------------------------------------ storage


def test_fsspec_url_through_a_file_object(stack_tif):
    url = "memory://geo-tests/stack.tif"
    with open(stack_tif, "rb") as fh:
        storage.write_bytes(url, fh.read())
    local = read_window(open_raster(stack_tif, bands=(4, 3, 2)), Window(3, 4, 20, 10))[0]
    remote = read_window(open_raster(url, bands=(4, 3, 2)), Window(3, 4, 20, 10))[0]
    np.testing.assert_array_equal(local, remote)


def test_gdal_env_from_storage_options():
    options = gdal_env_options("s3://b/k.tif", {
        "key": "K", "secret": "S", "endpoint_url": "http://127.0.0.1:9000", "client_kwargs": {"region_name": "eu-1"},
    })
    assert options == {"AWS_ACCESS_KEY_ID": "K", "AWS_SECRET_ACCESS_KEY": "S", "AWS_REGION": "eu-1",
                       "AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}
    assert gdal_env_options("s3://b/k.tif", {"anon": True}) == {"AWS_NO_SIGN_REQUEST": "YES"}
    assert gdal_env_options("/local/k.tif", {"key": "K", "secret": "S"}) == {}
    assert gdal_env_options("s3://b/k.tif", {"endpoint_url": "https://minio.example:443/"})["AWS_HTTPS"] == "YES"


@pytest.mark.integration
@pytest.mark.parametrize("gdal_s3", [True, False], ids=["gdal-vsis3", "fsspec-file-object"])
def test_s3_windowed_read_with_storage_options(s3_server, stack_tif, monkeypatch, gdal_s3):
    monkeypatch.setattr(raster, "USE_GDAL_S3", gdal_s3)
    bucket = s3_server["make_bucket"]()
    so = s3_server["storage_options"]
    url = f"{bucket}/scenes/stack.tif"
    with open(stack_tif, "rb") as fh:
        storage.write_bytes(url, fh.read(), so)
    source = open_raster(url, bands=(4, 3, 2), storage_options=so)
    assert source.crs.to_epsg() == 32633 and source.width == 96
    assert "testing" not in repr(source)  # credentials never in the value's repr
    window = Window(10, 5, 40, 30)
    remote, valid = read_window(source, window)
    local, _ = read_window(open_raster(stack_tif, bands=(4, 3, 2)), window)
    np.testing.assert_array_equal(remote, local)
    assert valid.all()
    with pytest.raises(ObjectNotFoundError, match=re.escape(f"{bucket}/scenes/missing.tif")):
        open_raster(f"{bucket}/scenes/missing.tif", storage_options=so)
