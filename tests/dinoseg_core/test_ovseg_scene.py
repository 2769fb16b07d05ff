"""Classes named in text on scenes, window by window (:mod:`dinoseg_core.ovseg.scene`), against the whole-image path
on GeoTIFFs small enough to do both, with tiny random towers."""

from __future__ import annotations

import numpy as np
import pytest

from dinoseg_core.config import SceneConfig
from dinoseg_core.errors import InputError
from dinoseg_core.geo.windows import WindowGrid
from dinoseg_core.io.raster import open_raster, raster_reader, read_window
from dinoseg_core.ovseg import OvsegConfig, TextSegmenter, load_dinotxt
from dinoseg_core.ovseg.scene import SCENE_WINDOW, resolve_scene_config, segment_scene
from tests.dinoseg_core.geo_data import write_geotiff

#: The working size is the scene's (no resize), so the scene's windows and the whole image see the same pixels.
NATIVE = OvsegConfig(short_side=None, window=64, stride=32, templates=("a photo of a {}.",))
CLASSES = ["grass", "red square", "blue disk"]
HEIGHT, WIDTH = 192, 256
#: 2 x 3 windows of 128 px, starting every 64 px (multiples of the segmenter's stride).
SCENE = SceneConfig(window_size=128, overlap=64)


@pytest.fixture(scope="module")
def segmenter():
    return TextSegmenter(load_dinotxt("random:tiny@0", device="cpu"), NATIVE)


@pytest.fixture(scope="module")
def classes(segmenter):
    return segmenter.embed_classes(CLASSES)


def scene_bands(nodata_block: tuple[slice, slice] | None = None) -> np.ndarray:
    """uint16 (3, H, W): grass with a red rectangle crossing every window border and a blue disk, in 12-bit-like
    digital numbers; ``nodata_block`` set to 0 (the nodata value)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    image = np.empty((3, HEIGHT, WIDTH), np.float32)
    image[:] = np.array([0.25, 0.55, 0.2])[:, None, None]
    image[:, (abs(yy - 90) < 40) & (abs(xx - 120) < 60)] = np.array([0.85, 0.15, 0.1])[:, None]
    image[:, (yy - 150) ** 2 + (xx - 200) ** 2 < 30 ** 2] = np.array([0.1, 0.2, 0.85])[:, None]
    image += rng.normal(0, 0.03, image.shape)
    data = (np.clip(image, 0, 1) * 4000 + 100).astype(np.uint16)
    if nodata_block is not None:
        data[:, nodata_block[0], nodata_block[1]] = 0
    return data


class LabelWriter:
    """Collects label blocks into an array and counts how often each pixel was written."""

    def __init__(self, shape):
        self.labels = np.zeros(shape, np.uint16)
        self.count = np.zeros(shape, np.int32)

    def __call__(self, row, col, block):
        assert block.dtype == np.uint16
        self.labels[row : row + block.shape[0], col : col + block.shape[1]] = block
        self.count[row : row + block.shape[0], col : col + block.shape[1]] += 1


def run_scene(segmenter, classes, path, config, reads=None):
    source = open_raster(path)
    writer = LabelWriter(source.shape)
    with raster_reader(source) as reader:
        def read(window, out_shape=None):
            if reads is not None:
                reads.append((window, out_shape))
            return reader.read(window, out_shape)

        result = segment_scene(segmenter, classes, read, source.shape, writer, name=path, config=config)
    assert (writer.count == 1).all()  # every pixel written exactly once
    return result, writer.labels


def region_ious(whole: np.ndarray, labels: np.ndarray, borders: list[int]) -> tuple[dict[int, float], int]:
    """IoU of each class region of ``whole`` (over 5 % of the scene) with ``labels``, and how many of those regions
    span one of the window ``borders`` (rows)."""
    ious, crossing = {}, 0
    for value in np.unique(whole):
        region = whole == value
        if region.mean() < 0.05:
            continue
        rows = np.flatnonzero(region.any(axis=1))
        crossing += any(rows.min() < b < rows.max() for b in borders)
        ious[int(value)] = float((region & (labels == value)).sum() / (region | (labels == value)).sum())
    return ious, crossing


def test_class_regions_across_window_borders_match_the_whole_image_path(segmenter, classes, tmp_path):
    path = write_geotiff(tmp_path / "scene.tif", scene_bands())
    image = read_window(open_raster(path))[0]
    grid = WindowGrid.build(HEIGHT, WIDTH, 128, 64)
    borders = sorted({s for s, _ in grid.rows[1:]} | {e for _, e in grid.rows[:-1]})

    # windows only: the stitched windows equal the whole image but where the segmenter's windows differ
    local = TextSegmenter(segmenter.dinotxt, NATIVE.replace(global_view=False))
    result, labels = run_scene(local, classes, path, SCENE)
    ious, crossing = region_ious(local.segment(image, classes).labels, labels, borders)
    assert result.windows == len(grid) == 6 and result.windows_skipped == 0 and result.global_view is None
    assert crossing >= 1 and min(ious.values()) > 0.98, ious  # a class region spans a window border: no seam

    # with the scene's global view: read once, reduced by GDAL (average) where a tile's is resized by torch
    reads = []
    result, labels = run_scene(segmenter, classes, path, SCENE, reads)
    whole = segmenter.segment(image, classes).labels
    assert result.global_view == (48, 64) and reads[0] == (None, (48, 64))  # one reduced read of the whole scene
    assert all(out is None and (w.height, w.width) == (128, 128) for w, out in reads[1:])  # then only windows
    ious, crossing = region_ious(whole, labels, borders)
    assert crossing >= 1 and min(ious.values()) > 0.85 and (labels == whole).mean() > 0.97, ious
    assert result.class_pixels == {n: int((labels == v).sum()) for v, n in enumerate(["background", *CLASSES])}


def test_a_trained_head_labels_scenes_through_the_same_windows(segmenter, classes, tmp_path):
    from tests.ovseg_factory import tiny_seg_model

    path = write_geotiff(tmp_path / "scene.tif", scene_bands())
    head = TextSegmenter(tiny_seg_model(segmenter.dinotxt), NATIVE.replace(global_view=False))
    assert head.mode == "dinov3.seg"
    result, labels = run_scene(head, classes, path, SCENE)
    whole = head.segment(read_window(open_raster(path))[0], classes).labels
    assert result.windows == 6 and (labels == whole).mean() > 0.95
    assert (np.bincount(whole.ravel()) > 0.05 * whole.size).sum() >= 2  # not one class everywhere


def test_a_scene_of_one_window_is_labelled_as_a_tile(segmenter, classes, tmp_path):
    path = write_geotiff(tmp_path / "scene.tif", scene_bands())
    result, labels = run_scene(segmenter, classes, path, SceneConfig(window_size=256, overlap=64))
    assert result.windows == 1
    np.testing.assert_array_equal(labels, segmenter.segment(read_window(open_raster(path))[0], classes).labels)


def test_nodata_is_background_and_empty_windows_are_skipped(segmenter, classes, tmp_path):
    path = write_geotiff(tmp_path / "scene.tif", scene_bands((slice(0, 128), slice(0, 128))), nodata=0)
    result, labels = run_scene(segmenter, classes, path, SceneConfig(window_size=128, overlap=64,
                                                                     global_context=False))
    assert result.windows_skipped == 1 and result.global_view is None
    assert (labels[:128, :128] == 0).all() and (labels[128:] > 0).all() and (labels[:, 128:] > 0).all()
    assert result.class_pixels["background"] == 128 * 128


def test_scene_defaults_follow_the_segmenter_and_bad_overlaps_fail_early():
    resolved = resolve_scene_config(None, OvsegConfig())
    assert (resolved.window_size, resolved.context_size) == (640, 384)  # full resolution; a tile's global view
    assert resolve_scene_config(SceneConfig(window_size=1024), OvsegConfig()).window_size == 1024
    assert resolve_scene_config(None, OvsegConfig(short_side=None)).window_size == SCENE_WINDOW
    small = OvsegConfig(short_side=96, window=96, stride=64)
    assert (resolve_scene_config(None, small).window_size, resolve_scene_config(None, small).overlap) == (96, 24)
    with pytest.raises(InputError, match="overlap=100 must be smaller than window_size=96"):
        resolve_scene_config(SceneConfig(overlap=100), small)


@pytest.mark.slow
def test_memory_is_bounded_by_the_window_not_the_scene(segmenter, classes, tmp_path):
    """numpy allocations (traced: reads, class probabilities, stitch buffers) stay flat when the scene grows 4x
    in height, far below one whole-scene float32 image."""
    import tracemalloc

    from tests.dinoseg_core.geo_data import band_stack

    peaks = {}
    for height in (256, 1024):
        path = write_geotiff(tmp_path / f"s{height}.tif", band_stack(height, 128, count=3))
        source = open_raster(path)
        written = {"pixels": 0}

        def writer(row, col, block, written=written):
            written["pixels"] += block.size

        tracemalloc.start()
        with raster_reader(source) as reader:
            result = segment_scene(segmenter, classes, reader.read, source.shape, writer,
                                   config=SceneConfig(window_size=64, overlap=16))
        peaks[height] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert written["pixels"] == height * 128 and result.windows == len(WindowGrid.build(height, 128, 64, 16))
    assert peaks[1024] < 1024 * 128 * 3 * 4 / 2, peaks  # half of the scene as one float32 RGB image
    # one more whole-scene float32 channel (1024 x 128 x 4 = 512 KB) would break this
    assert peaks[1024] < peaks[256] * 1.25 + 192 * 1024, peaks
