"""segment_scene: windows + global context + stitching on synthetic GeoTIFF scenes with exact ground truth."""

import tracemalloc

import numpy as np
import pytest
import rasterio
import torch
import zarr
from scipy import ndimage

from dinoseg_core.backbone import load_backbone
from dinoseg_core.config import InsidConfig
from dinoseg_core.errors import InputError
from dinoseg_core.geo import SceneConfig, WindowGrid, segment_scene
from dinoseg_core.geo.scene import scene_threshold
from dinoseg_core.geo.synthetic import RGB_BANDS, write_synthetic_geotiff
from dinoseg_core.io.maskwriter import ZarrMaskWriter
from dinoseg_core.io.raster import open_raster, raster_reader
from dinoseg_core.segmenter import InContextSegmenter
from dinoseg_core.synthetic import generate_scene

#: See docs/method.md, "Random weights and tau".
RANDOM_WEIGHTS_TAU = 0.9
CONCEPT = "roof"


def iou(pred, truth):
    return (pred & truth).sum() / max((pred | truth).sum(), 1)


class ArrayWriter:
    """Collects the stitched blocks into an in-memory array (fine for test-sized scenes) and counts writes."""

    def __init__(self, shape):
        self.mask = np.zeros(shape, bool)
        self.count = np.zeros(shape, np.uint8)

    def __call__(self, row, col, block):
        self.mask[row : row + block.shape[0], col : col + block.shape[1]] = block
        self.count[row : row + block.shape[0], col : col + block.shape[1]] += 1


# ------------------------------------------------------------------------------------------ no model


def test_scene_config_validation_and_round_trip():
    config = SceneConfig(window_size=512, overlap=64, global_weight=0.3)
    assert SceneConfig.from_dict(config.to_dict()) == config
    for bad in ({"overlap": -1}, {"window_size": 256, "overlap": 256}, {"global_weight": 1.5}, {"threshold": 0},
                {"window_size": 8}):
        with pytest.raises(InputError):
            SceneConfig(**bad)
    with pytest.raises(InputError, match="unknown scene config"):
        SceneConfig.from_dict({"window": 3})


def test_overlap_must_stay_below_the_default_window():
    class Stub:  # segment_scene resolves its defaults from the segmenter before any model work
        config = InsidConfig(image_size=256)

    with pytest.raises(InputError, match="overlap=256 must be smaller than window_size=256"):
        segment_scene(Stub(), None, None, (256, 256), lambda *a: None, overlap=256)


def test_scene_threshold_splits_the_global_map():
    similarity = np.array([[0.8, 0.7], [0.1, 0.2]], np.float32)
    assert scene_threshold(similarity, similarity > 0.5) == pytest.approx(0.45)
    assert scene_threshold(similarity, np.zeros((2, 2), bool)) == 0.0  # no concept seen: the paper's rule
    negative = -similarity
    assert scene_threshold(negative, np.zeros((2, 2), bool)) == pytest.approx(np.quantile(negative, 0.9))


# ------------------------------------------------------------------------------------------ random tiny ViT


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("random:tiny", device="cpu")


@pytest.mark.slow
def test_the_scene_comes_in_through_a_read_callable(tiny):
    """No raster: an in-memory scene read by a plain function; the whole-scene pass asks for a thumbnail."""
    segmenter = InContextSegmenter(tiny, InsidConfig(image_size=128, tau=RANDOM_WEIGHTS_TAU))
    reference = generate_scene(0, 128)
    refs = segmenter.embed_references([reference.image], [reference.labels[CONCEPT]])
    scene = generate_scene(1, 256).image[:160, :200]
    valid = np.ones(scene.shape[:2], bool)
    valid[96:, 136:] = False  # a nodata corner: never foreground; the last window lies inside it
    calls = []

    def read(window, out_shape=None):
        calls.append((window, out_shape))
        if window is None:  # nearest is enough for a test; a raster reader averages
            rows = np.linspace(0, scene.shape[0] - 1, out_shape[0]).round().astype(int)
            cols = np.linspace(0, scene.shape[1] - 1, out_shape[1]).round().astype(int)
            return scene[np.ix_(rows, cols)], valid[np.ix_(rows, cols)]
        r, c, h, w = window.row_off, window.col_off, window.height, window.width
        return scene[r : r + h, c : c + w], valid[r : r + h, c : c + w]

    writer = ArrayWriter((160, 200))
    result = segment_scene(segmenter, refs, read, (160, 200), writer, name="memory scene", overlap=16,
                           window_size=64)
    assert calls[0] == (None, (102, 128)) and all(out is None for _, out in calls[1:])
    assert result.shape == (160, 200) and result.windows == len(calls) - 1 == len(WindowGrid.build(160, 200, 64, 16))
    assert result.windows_skipped == 1 and result.scene_threshold is not None
    assert (writer.count == 1).all() and writer.mask.any() and not writer.mask[96:, 136:].any()
    assert result.foreground_pixels == writer.mask.sum()


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_scene_size(tiny, tmp_path):
    """numpy allocations (traced by tracemalloc: reads, scores, stitch buffers) stay flat when the scene's area
    grows 4x, and far below one whole-scene float32 image; torch's own allocations are per window."""
    segmenter = InContextSegmenter(tiny, InsidConfig(image_size=128, tau=RANDOM_WEIGHTS_TAU))
    reference = generate_scene(0, 128)
    refs = segmenter.embed_references([reference.image], [reference.labels[CONCEPT]])
    peaks = {}
    for size in (512, 1024):
        path = write_synthetic_geotiff(tmp_path / f"s{size}.tif", size, tile=256, distinct_tiles=2)["path"]
        source = open_raster(path, bands=RGB_BANDS)
        counts = {"pixels": 0}

        def writer(row, col, block, counts=counts):
            counts["pixels"] += block.size

        tracemalloc.start()
        with raster_reader(source) as reader:
            result = segment_scene(segmenter, refs, reader.read, source.shape, writer, window_size=256, overlap=32)
        peaks[size] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert counts["pixels"] == size * size and result.windows == len(WindowGrid.build(size, size, 256, 32))
    whole_scene_image = 1024 * 1024 * 3 * 4  # what reading the scene as one float32 RGB image would take
    assert peaks[1024] < whole_scene_image / 2, peaks
    assert peaks[1024] < peaks[512] * 1.25 + 256 * 1024, peaks  # the overlap strip grows with the width only


# ------------------------------------------------------------------------------------------ random ViT-S


@pytest.fixture(scope="module")
def segmenter():
    backbone = load_backbone("random:dinov3-vits16@0", device="cpu")
    return InContextSegmenter(backbone, InsidConfig(image_size=512, tau=RANDOM_WEIGHTS_TAU))


@pytest.fixture(scope="module")
def references(segmenter):
    reference = generate_scene(0, 512)
    return segmenter.embed_references([reference.image], [reference.labels[CONCEPT]])


NODATA = (0, 800, 160, 224)  # row, col, height, width: the upper-right corner


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory):
    """A 1024 px scene (one generated scene at 1024, so roofs are 64-180 px and several cross window borders),
    4-band uint16, UTM 33N, with a nodata corner; and its roof ground truth."""
    root = tmp_path_factory.mktemp("scene")
    info = write_synthetic_geotiff(root / "scene.tif", 1024, tile=1024, seed=6, labels_path=root / "roof.tif",
                                   concept=CONCEPT, nodata_regions=[NODATA])
    with rasterio.open(info["labels_path"]) as ds:
        truth = ds.read(1) == 1
    return open_raster(info["path"], bands=RGB_BANDS), truth


def _border_breaks(pred, truth, lines, axis):
    """Fraction of pixel pairs straddling each line where the truth continues but the prediction does not."""
    take = (lambda a, i: a[:, i]) if axis == 1 else (lambda a, i: a[i])
    before = take(pred, [line - 1 for line in lines])
    after = take(pred, list(lines))
    same = take(truth, [line - 1 for line in lines]) == take(truth, list(lines))
    return float(((before != after) & same).mean())


@pytest.mark.slow
def test_large_scene_is_seamless_georeferenced_and_masks_nodata(segmenter, references, big_scene, tmp_path):
    source, truth = big_scene
    url = str(tmp_path / "mask.zarr")
    with raster_reader(source) as reader, ZarrMaskWriter.create(url, source, attributes={"concept": CONCEPT}) as writer:
        result = segment_scene(segmenter, references, reader.read, source.shape, writer, name=source.display_url,
                               window_size=512, overlap=128)
    grid = WindowGrid.build(1024, 1024, 512, 128)
    assert result.windows == len(grid) == 9 and result.shape == (1024, 1024)
    assert result.global_similarity.shape == (32, 32) and result.scene_threshold is not None
    assert writer.chunks_written == 4  # 512-px chunks, each written once, whole
    mask = zarr.open_group(url, mode="r")["mask"][:] > 0
    assert result.foreground_pixels == mask.sum()

    # 1. quality: the stitched mask matches the ground truth (a single 512 px image scores ~0.7 IoU)
    assert iou(mask, truth) > 0.75, iou(mask, truth)

    # 2. nodata is never foreground
    row, col, height, width = NODATA
    assert not mask[row : row + height, col : col + width].any()

    # 3. no seams: along window borders the mask breaks where the truth does not no more often than along the
    #    other lines of the 16 px patch grid (where boundaries of a patch-level mask snap anyway)
    borders = sorted({s for s, _ in grid.cols[1:]} | {e for _, e in grid.cols[:-1]})
    patch_lines = [c for c in range(16, 1024, 16) if c not in borders]
    for axis in (0, 1):
        at_borders = _border_breaks(mask, truth, borders, axis)
        elsewhere = _border_breaks(mask, truth, patch_lines, axis)
        assert at_borders <= 2 * elsewhere + 0.005, (axis, at_borders, elsewhere)

    # 4. every roof that crosses a window border is found as one connected piece, not cut at the border
    objects, count = ndimage.label(truth)
    predicted, _ = ndimage.label(mask)
    crossing = 0
    for k in range(1, count + 1):
        ys, xs = np.nonzero(objects == k)
        if not any(xs.min() < b <= xs.max() or ys.min() < b <= ys.max() for b in borders):
            continue
        crossing += 1
        hits = predicted[(objects == k) & mask]
        assert hits.size > 0.5 * ys.size, f"roof {k} mostly missed"
        assert np.bincount(hits).max() / hits.size > 0.98, f"roof {k} split into pieces"
    assert crossing >= 4


@pytest.mark.slow
def test_global_context_can_be_turned_off(tiny, big_scene):
    source, _ = big_scene
    segmenter = InContextSegmenter(tiny, InsidConfig(image_size=256, tau=RANDOM_WEIGHTS_TAU))
    reference = generate_scene(0, 256)
    refs = segmenter.embed_references([reference.image], [reference.labels[CONCEPT]])
    writer = ArrayWriter(source.shape)
    config = SceneConfig(window_size=512, overlap=128, global_context=False)  # windows downscaled 2x to 256 px
    with raster_reader(source) as reader:
        result = segment_scene(segmenter, refs, reader.read, source.shape, writer, config=config)
    assert result.global_similarity is None and result.scene_threshold is None and result.timings["global"] == 0
    assert result.config["global_context"] is False and result.config["context_size"] == 256
    assert (writer.count == 1).all()


@pytest.mark.slow
def test_reference_embedded_from_a_geotiff_window(segmenter, tmp_path):
    from dinoseg_core.io.raster import Window, read_reference

    info = write_synthetic_geotiff(tmp_path / "ref.tif", 1024, tile=512, seed=11, labels_path=tmp_path / "ref_roof.tif")
    image, mask = read_reference(info["path"], info["labels_path"], Window(512, 0, 512, 512), bands=RGB_BANDS)
    refs = segmenter.embed_references([image], [mask])
    assert refs.prototype.shape == (segmenter.backbone.embed_dim,)
    assert torch.isfinite(refs.prototype).all()
