"""Radiometry: the text forms, the ranges each gives, and raster reads (scenes, references, a collection) with them."""

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from dinoseg_core.errors import InputError
from dinoseg_core.io.radiometry import Radiometry, percentile_ranges
from dinoseg_core.io.raster import Window, collection_radiometry, open_raster, read_reference, read_window
from tests.dinoseg_core.geo_data import band_stack, write_geotiff

# ------------------------------------------------------------------------------------------ text forms


@pytest.mark.parametrize("text, canonical", [
    ("scene-percentile", "scene-percentile"),
    (" Scene-Percentile ", "scene-percentile"),
    ("scene-percentile:2,98", "scene-percentile"),
    ("collection-percentile:1,99.5", "collection-percentile:1,99.5"),
    ("fixed:0,3000", "fixed:0,3000"),
    ("fixed: 0, 3000.0 ; 0,2800;0,2500", "fixed:0,3000;0,2800;0,2500"),
    ("scale:0.0001", "scale:0.0001"),
    ("scale:0.0001,-0.1", "scale:0.0001,-0.1"),
    ("none", "none"),
])
def test_parse_gives_one_canonical_text(text, canonical):
    parsed = Radiometry.parse(text)
    assert str(parsed) == canonical
    assert Radiometry.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text, named", [
    ("gamma", "unknown kind 'gamma'"),
    ("fixed", "fixed needs a value"),
    ("fixed:3000,0", "range 1 '3000,0' must be LOW,HIGH with HIGH > LOW"),
    ("fixed:0,1;0,2", "not 2"),
    ("fixed:0,a", "range 1 '0,a' is not a list of numbers"),
    ("fixed:0,inf", "must be finite"),
    ("scale:0", "FACTOR must be > 0"),
    ("scale:1,2,3", "FACTOR or FACTOR,OFFSET"),
    ("none:1", "'none' takes no value"),
    ("scene-percentile:98,2", "percentiles '98,2' must be LOW,HIGH"),
    ("collection-percentile:5", "percentiles '5'"),
])
def test_bad_text_is_named(text, named):
    with pytest.raises(InputError, match="radiometry") as info:
        Radiometry.parse(text)
    assert text in str(info.value) and named in str(info.value)


def test_only_a_non_default_radiometry_enters_the_config():
    assert Radiometry.parse(None).stamp() == {} == Radiometry.parse("scene-percentile:2,98").stamp()
    assert Radiometry.parse("fixed:0,3000").stamp() == {"radiometry": "fixed:0,3000"}
    computed = Radiometry.parse("collection-percentile").with_ranges([(300, 6000), (310, 6100), (320, 6200)])
    assert computed.stamp() == {"radiometry": "collection-percentile",
                                "radiometry_ranges": [[300, 6000], [310, 6100], [320, 6200]]}


# ------------------------------------------------------------------------------------------ ranges


def test_ranges_of_each_kind():
    assert Radiometry.parse("fixed:0,3000").band_ranges("uint16", 3) == ((0, 3000),) * 3
    assert Radiometry.parse("fixed:0,1;0,2;0,3").band_ranges("uint16", 3) == ((0, 1), (0, 2), (0, 3))
    low, high = Radiometry.parse("scale:0.0001,-0.1").band_ranges("uint16", 1)[0]
    assert (low, high) == pytest.approx((1000.0, 11000.0))  # value * 0.0001 - 0.1 is 0 at 1000 and 1 at 11000
    for text in ("scene-percentile", "collection-percentile", "none"):  # 8-bit data is display-ready
        assert Radiometry.parse(text).band_ranges("uint8", 3) == ((0.0, 255.0),) * 3
    with pytest.raises(InputError, match="fixed:0,1;0,2;0,3 gives 3 range.* but 1 band"):
        Radiometry.parse("fixed:0,1;0,2;0,3").band_ranges("uint16", 1)
    with pytest.raises(InputError, match="not computed yet"):
        Radiometry.parse("collection-percentile").band_ranges("uint16", 3)


def test_none_refuses_non_8_bit_data_and_says_what_to_do():
    with pytest.raises(InputError, match=r"'none' takes 8-bit data as is, but scene\.tif is uint16: .*fixed:LOW,HIGH"):
        Radiometry.parse("none").band_ranges("uint16", 3, name="scene.tif")


def test_apply_maps_each_band_and_clips():
    data = np.array([[[0, 1500, 3000, 4000]], [[100, 200, 300, 400]]], np.uint16)
    out = Radiometry.apply(data, [(0, 3000), (100, 500)])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[[0, 0.5, 1, 1]], [[0, 0.25, 0.5, 0.75]]], rtol=1e-6)
    with pytest.raises(InputError, match="one range per band"):
        Radiometry.apply(data, [(0, 1)])


def test_percentiles_pool_every_part_and_survive_empty_and_constant_bands():
    parts = [np.arange(0, 50), np.arange(50, 101)]
    (low, high), empty, constant = percentile_ranges([parts, [], [np.full(9, 7.0)]], (10, 90))
    assert (low, high) == (10.0, 90.0)
    assert empty == (0.0, 1.0) and constant == (7.0, 8.0)


# ------------------------------------------------------------------------------------------ raster reads


def test_fixed_ranges_follow_the_selected_band_order(tmp_path):
    data = band_stack()  # band k holds values around k * 1000
    path = write_geotiff(tmp_path / "s.tif", data)
    source = open_raster(path, bands=(3, 2, 1), radiometry="fixed:3000,4000;2000,3000;1000,2000")
    assert source.stretch == ((3000, 4000), (2000, 3000), (1000, 2000)) and source.radiometry.startswith("fixed")
    image, _ = read_window(source)
    for channel, band in enumerate((3, 2, 1)):
        np.testing.assert_allclose(image[..., channel], np.clip((data[band - 1] - band * 1000) / 1000, 0, 1),
                                   rtol=1e-5, atol=1e-6)
    assert source.to_dict()["radiometry"] == "fixed:3000,4000;2000,3000;1000,2000"


def test_a_16_bit_scene_with_fixed_ranges_reads_as_its_8_bit_twin(tmp_path):
    rng = np.random.default_rng(3)
    value = rng.random((3, 48, 64))
    eight = write_geotiff(tmp_path / "u8.tif", (value * 255).round().astype(np.uint8), nodata=None)
    sixteen = write_geotiff(tmp_path / "u16.tif", (300 + 6000 * value).round().astype(np.uint16), nodata=None)
    a, _ = read_window(open_raster(eight))
    b, _ = read_window(open_raster(sixteen, radiometry="fixed:300,6300"))
    assert np.abs(a - b).max() <= 0.5 / 255 + 1e-4  # 8-bit rounding is the only difference
    c, _ = read_window(open_raster(sixteen, radiometry="scale:0.000166666667,-0.05"))
    np.testing.assert_allclose(b, c, atol=1e-5)


def test_references_are_read_with_the_targets_radiometry(tmp_path):
    data = band_stack()
    labels = np.zeros((64, 96), np.uint8)
    labels[10:30, 10:40] = 1
    image_path = write_geotiff(tmp_path / "ref.tif", data)
    mask_path = write_geotiff(tmp_path / "ref_mask.tif", labels, nodata=None)
    image, _ = read_reference(image_path, mask_path, Window(0, 0, 64, 48), bands=(1,), radiometry="fixed:1000,1550")
    np.testing.assert_allclose(image[..., 0], np.clip((data[0, :48, :64] - 1000) / 550, 0, 1), rtol=1e-5, atol=1e-6)


def _scene(path, low, seed, *, overviews=False, size=(96, 128)):
    values = np.random.default_rng(seed).integers(low, low + 4000, (3, *size)).astype(np.uint16)
    write_geotiff(path, values)
    if overviews:
        with rasterio.open(path, "r+") as ds:
            ds.build_overviews([2, 4], Resampling.nearest)
    return str(path), values


def test_collection_stretch_is_one_for_every_scene_in_any_order_and_on_every_call(tmp_path):
    dark, dark_values = _scene(tmp_path / "dark.tif", 1000, 1)
    bright, bright_values = _scene(tmp_path / "bright.tif", 5000, 2, overviews=True)
    eight = write_geotiff(tmp_path / "u8.tif", np.full((3, 32, 32), 9, np.uint8))
    spec = collection_radiometry([dark, bright, eight], radiometry="collection-percentile")
    assert spec == collection_radiometry([eight, bright, dark, dark]) == collection_radiometry([bright, dark, eight])
    pooled = np.concatenate([dark_values.reshape(3, -1), bright_values.reshape(3, -1)], axis=1)
    for (low, high), band in zip(spec.ranges, pooled):  # the pooled sample's percentiles, within sampling error
        assert low == pytest.approx(np.percentile(band, 2), abs=150)
        assert high == pytest.approx(np.percentile(band, 98), abs=150)
    sources = [open_raster(url, radiometry=spec) for url in (dark, bright)]
    assert sources[0].stretch == sources[1].stretch == spec.ranges  # the same stretch for every scene
    assert read_window(sources[0])[0].mean() < 0.4 < 0.6 < read_window(sources[1])[0].mean()  # not re-stretched
    scene_stretched = [read_window(open_raster(url))[0].mean() for url in (dark, bright)]
    assert abs(scene_stretched[0] - scene_stretched[1]) < 0.05  # what the per-scene stretch hides
    assert collection_radiometry([eight]).ranges == ()  # an 8-bit collection is used as is


def test_collection_sample_is_bounded_without_overviews(tmp_path, monkeypatch):
    from dinoseg_core.io import raster

    big, values = _scene(tmp_path / "big.tif", 2000, 4, size=(600, 600))
    reads = []
    monkeypatch.setattr(raster, "_grid_sample", lambda *a, _f=raster._grid_sample: reads.append(a) or _f(*a))
    spec = collection_radiometry([big] * 1 + [_scene(tmp_path / f"s{i}.tif", 2000, 10 + i, size=(600, 600))[0]
                                              for i in range(3)], sample_size=256)
    assert len(reads) == 4  # 4 scenes without overviews, 16x larger than their share of the sample: windows
    for (low, high), band in zip(spec.ranges, values.reshape(3, -1)):
        assert low == pytest.approx(np.percentile(band, 2), abs=150)
        assert high == pytest.approx(np.percentile(band, 98), abs=150)


def test_collection_errors_are_named(tmp_path):
    with pytest.raises(InputError, match="not a collection stretch"):
        collection_radiometry([str(tmp_path / "x.tif")], radiometry="fixed:0,1")
    with pytest.raises(InputError, match="no scenes"):
        collection_radiometry([])
    path, _ = _scene(tmp_path / "a.tif", 1000, 1)
    with pytest.raises(InputError, match=r"band 7 is out of range for .*a\.tif"):
        collection_radiometry([path], bands=(7, 2, 1))
