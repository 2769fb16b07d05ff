"""Window grids cover scenes exactly; the stitcher blends without seams, writes each pixel once, in bounded memory;
the zarr writer writes whole chunks."""

import itertools

import numpy as np
import pytest
import zarr
from scipy import ndimage

from dinoseg_core.errors import InputError
from dinoseg_core.geo import Stitcher, WindowGrid
from dinoseg_core.io.maskwriter import ZarrMaskWriter
from dinoseg_core.geo.windows import axis_spans


@pytest.mark.parametrize(
    "length,size,overlap",
    [(1000, 256, 32), (256, 256, 32), (257, 256, 32), (100, 256, 32), (4096, 512, 64), (1537, 512, 128),
     (999, 100, 0), (700, 512, 300)],
)
def test_windows_cover_the_axis_exactly_with_full_size_windows(length, size, overlap):
    spans = axis_spans(length, size, overlap)
    covered = np.zeros(length, int)
    for start, stop in spans:
        covered[start:stop] += 1
    assert covered.min() >= 1  # nothing dropped, edge pixels included
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(stop - start == min(size, length) for start, stop in spans)
    for (s0, e0), (s1, _) in itertools.pairwise(spans):
        assert s1 > s0 and e0 - s1 >= overlap - 1  # rounding may take at most one pixel
    # as few windows as that overlap allows
    assert len(spans) == (1 if length <= size else int(np.ceil((length - overlap) / (size - overlap))))


def test_grid_iterates_row_major_windows():
    grid = WindowGrid.build(300, 500, 256, 32)
    windows = list(grid)
    assert len(windows) == len(grid) == 2 * 3
    assert [(i, j) for i, j, _ in windows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    last = windows[-1][2]
    assert (last.row_off + last.height, last.col_off + last.width) == (300, 500)


@pytest.mark.parametrize("kwargs", [{"window_size": 0, "overlap": 0}, {"window_size": 256, "overlap": 256},
                                    {"window_size": 256, "overlap": -1}])
def test_bad_grid_parameters(kwargs):
    with pytest.raises(InputError):
        WindowGrid.build(100, 100, **kwargs)


class CountingWriter:
    def __init__(self, shape):
        self.count = np.zeros(shape, np.int32)
        self.mask = np.zeros(shape, bool)

    def __call__(self, row, col, block):
        self.count[row : row + block.shape[0], col : col + block.shape[1]] += 1
        self.mask[row : row + block.shape[0], col : col + block.shape[1]] = block


def _stitch(grid, score_of, valid_of=None, order=None):
    writer = CountingWriter((grid.height, grid.width))
    stitcher = Stitcher(grid, writer)
    windows = list(grid)
    for i, j, win in (windows if order is None else [windows[k] for k in order]):
        rows = slice(win.row_off, win.row_off + win.height)
        cols = slice(win.col_off, win.col_off + win.width)
        stitcher.add(i, j, score_of(i, j, rows, cols), None if valid_of is None else valid_of(rows, cols))
    stitcher.close()
    return writer, stitcher


@pytest.mark.parametrize("shape", [(700, 1000), (256, 256), (100, 900), (513, 1025)])
def test_every_pixel_is_written_exactly_once_in_any_window_order(shape):
    grid = WindowGrid.build(*shape, 256, 48)
    truth = np.random.default_rng(0).random(shape) > 0.5
    order = np.random.default_rng(1).permutation(len(grid))
    writer, stitcher = _stitch(grid, lambda i, j, r, c: truth[r, c].astype(np.float32), order=order)
    assert (writer.count == 1).all()
    np.testing.assert_array_equal(writer.mask, truth)  # windows that agree reproduce their masks exactly
    assert stitcher.foreground_pixels == truth.sum()


def test_incomplete_stitching_is_reported():
    grid = WindowGrid.build(300, 300, 256, 32)
    stitcher = Stitcher(grid, lambda *a: None)
    stitcher.add(0, 0, np.ones((256, 256), np.float32))
    with pytest.raises(InputError, match="window"):
        stitcher.add(0, 0, np.ones((256, 256), np.float32))
    with pytest.raises(InputError, match="stitching incomplete"):
        stitcher.close()


def test_nodata_never_becomes_foreground():
    grid = WindowGrid.build(400, 400, 256, 64)
    valid = np.ones((400, 400), bool)
    valid[100:300, 150:350] = False
    writer, _ = _stitch(grid, lambda i, j, r, c: np.ones((r.stop - r.start, c.stop - c.start), np.float32),
                        valid_of=lambda r, c: valid[r, c])
    np.testing.assert_array_equal(writer.mask, valid)


def _soft_disk(rows, cols, cy, cx, radius, ramp=16.0):
    """A disk's foreground score with a soft edge (like an upsampled patch mask), over a window's pixels."""
    yy, xx = np.mgrid[rows, cols]
    return np.clip((radius - np.hypot(yy - cy, xx - cx)) / ramp + 0.5, 0, 1).astype(np.float32)


def test_windows_that_disagree_are_blended_without_a_seam():
    """An object spanning the border of two windows, which localise it 8 px apart (windows never agree exactly):
    the stitched mask is one component whose outline moves gradually through the overlap; cutting at a line
    between the windows instead leaves an 8 px step."""
    grid = WindowGrid.build(256, 448, 256, 64)  # two windows side by side, overlap 64 px (columns 192..255)
    assert grid.cols == ((0, 256), (192, 448))
    cy, cx, radius = 128, 224, 90
    shift = {0: 0, 1: 8}  # window 1 sees the object 8 px lower

    def score(i, j, rows, cols):
        return _soft_disk(rows, cols, cy + shift[j], cx, radius)

    writer, _ = _stitch(grid, score)
    mask = writer.mask
    assert ndimage.label(mask)[1] == 1
    top = mask.argmax(axis=0).astype(float)  # first foreground row per column = the object's upper outline
    columns = np.arange(160, 288)  # across the whole overlap and beyond
    steps = np.abs(np.diff(top[columns]))
    assert steps.max() <= 2, steps.max()
    # the hard cut at the middle of the overlap (what "take the central region of each window" gives)
    hard = np.zeros_like(mask)
    hard[:, :224] = score(0, 0, slice(0, 256), slice(0, 224)) >= 0.5
    hard[:, 224:] = score(0, 1, slice(0, 256), slice(224, 448)) >= 0.5
    hard_top = hard.argmax(axis=0).astype(float)
    assert np.abs(np.diff(hard_top[columns])).max() >= 6


def test_stitcher_memory_does_not_grow_with_scene_height_and_is_one_strip_wide():
    peaks, bounds = {}, {}
    for height in (1024, 4096):
        grid = WindowGrid.build(height, 1024, 256, 32)
        stitcher = Stitcher(grid, lambda *a: None)
        for i, j, win in grid:
            stitcher.add(i, j, np.zeros((win.height, win.width), np.float32))
        stitcher.close()
        peaks[height] = stitcher.peak_cells_bytes
        overlap = max(e0 - s1 for (_, e0), (s1, _) in zip(grid.rows, grid.rows[1:]))
        # one window plus the overlap strip below a row of windows (the scene would be height x 1024 x 4 bytes)
        bounds[height] = (256 * 256 + overlap * 1024) * 4
    assert peaks[4096] <= peaks[1024]  # 4x the scene, no more memory (the even spread makes overlaps a bit smaller)
    assert all(peaks[h] <= bounds[h] for h in peaks), (peaks, bounds)


def test_zarr_writer_writes_whole_chunks_only(tmp_path):
    class Source:
        height, width, georeferenced = 700, 900, False

    group = zarr.open_group(str(tmp_path / "m.zarr"), mode="w")
    writer = ZarrMaskWriter.create(group, Source(), chunks=256, attributes={"concept": "roof"})
    writes = []
    original = writer.array.__setitem__

    class Spy:  # records the writes that reach the zarr array
        def __init__(self, array):
            self._array = array
            self.name = array.name

        def __setitem__(self, key, value):
            writes.append((key, value.shape))
            original(key, value)

    writer.array = Spy(writer.array)
    grid = WindowGrid.build(700, 900, 256, 40)
    truth = np.random.default_rng(3).random((700, 900)) > 0.7
    with writer:
        stitcher = Stitcher(grid, writer)
        for i, j, win in grid:
            r = slice(win.row_off, win.row_off + win.height)
            c = slice(win.col_off, win.col_off + win.width)
            stitcher.add(i, j, truth[r, c].astype(np.float32))
        stitcher.close()
    assert len(writes) == 3 * 4  # every chunk written once, whole
    stored = zarr.open_group(str(tmp_path / "m.zarr"), mode="r")["mask"]
    assert stored.dtype == np.uint8 and stored.chunks == (256, 256) and stored.attrs["concept"] == "roof"
    np.testing.assert_array_equal(stored[:], truth.astype(np.uint8) * 255)
    assert writer.peak_buffer_bytes <= 2 * 256 * 900


def test_zarr_writer_reports_missing_chunks(tmp_path):
    class Source:
        height, width, georeferenced = 300, 300, False

    writer = ZarrMaskWriter.create(str(tmp_path / "x.zarr"), Source(), chunks=256)
    writer(0, 0, np.ones((100, 100), bool))
    with pytest.raises(InputError, match="incomplete"):
        writer.close()
    with pytest.raises(InputError, match="outside"):
        writer(250, 250, np.ones((100, 100), bool))
