"""Decoding every Pillow mode we promise, failing loudly on bad bytes, and encode/decode round trips."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dinoseg_core.errors import ImageDecodeError, InputError, ObjectNotFoundError
from dinoseg_core.io import imageio, storage

RNG = np.random.default_rng(0)
RGB8 = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
GREY8 = RNG.integers(0, 256, size=(6, 5), dtype=np.uint8)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def check_image(out: np.ndarray, h: int = 6, w: int = 5) -> None:
    assert out.dtype == np.float32
    assert out.shape == (h, w, 3)
    assert out.flags.c_contiguous
    assert np.all(out >= 0) and np.all(out <= 1)


# --- decode_image: one test per mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_rgb(fmt):
    out = imageio.decode_image(encode(Image.fromarray(RGB8), fmt), "x")
    check_image(out)
    np.testing.assert_allclose(out, RGB8 / 255.0, atol=1e-6)


def test_rgb_jpeg_is_close():
    flat = np.zeros((32, 32, 3), np.uint8)
    flat[:] = (200, 100, 50)
    out = imageio.decode_image(encode(Image.fromarray(flat), "JPEG", quality=95), "x.jpg")
    check_image(out, 32, 32)
    np.testing.assert_allclose(out, flat / 255.0, atol=0.03)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "JPEG"])
def test_grayscale_replicated(fmt):
    grey = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))
    out = imageio.decode_image(encode(Image.fromarray(grey), fmt), "g")
    check_image(out, 16, 16)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    np.testing.assert_allclose(out[..., 0], grey / 255.0, atol=0.03 if fmt == "JPEG" else 1e-6)


def test_bilevel_mode_1():
    bits = GREY8 > 128
    img = Image.fromarray(bits)
    assert img.mode == "1"
    out = imageio.decode_image(encode(img), "b")
    check_image(out)
    np.testing.assert_array_equal(out[..., 1], bits.astype(np.float32))


def test_la_alpha_dropped():
    img = Image.merge("LA", [Image.fromarray(GREY8), Image.fromarray(np.zeros_like(GREY8))])
    out = imageio.decode_image(encode(img), "la")
    check_image(out)
    np.testing.assert_allclose(out[..., 2], GREY8 / 255.0, atol=1e-6)


def test_rgba_alpha_dropped_colour_kept():
    alpha = np.zeros((6, 5, 1), np.uint8)  # fully transparent: colours must still come through
    img = Image.fromarray(np.concatenate([RGB8, alpha], axis=2))
    assert img.mode == "RGBA"
    out = imageio.decode_image(encode(img), "rgba")
    check_image(out)
    np.testing.assert_allclose(out, RGB8 / 255.0, atol=1e-6)


def test_palette():
    img = Image.fromarray(RGB8).quantize(colors=8)
    assert img.mode == "P"
    expected = np.asarray(img.convert("RGB")) / 255.0
    out = imageio.decode_image(encode(img), "p")
    check_image(out)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_palette_with_transparency():
    img = Image.fromarray(RGB8).quantize(colors=8)
    img.info["transparency"] = 0
    data = encode(img, transparency=0)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    expected = np.asarray(img.convert("RGB")) / 255.0
    out = imageio.decode_image(data, "pt")
    check_image(out)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk(fmt):
    cmyk = np.zeros((8, 8, 4), np.uint8)
    cmyk[:4, :, 0] = 255  # cyan top half; bottom half white (no ink)
    img = Image.frombytes("CMYK", (8, 8), cmyk.tobytes())
    data = encode(img, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    out = imageio.decode_image(data, "cmyk")
    check_image(out, 8, 8)
    np.testing.assert_allclose(out[0, 0], [0, 1, 1], atol=0.05)
    np.testing.assert_allclose(out[-1, -1], [1, 1, 1], atol=0.05)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_scaled(fmt):
    values = np.array([[0, 1, 32768], [65535, 1000, 60000]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = imageio.decode_image(encode(img, fmt), "16")
    check_image(out, 2, 3)
    np.testing.assert_allclose(out[..., 0], values / 65535.0, rtol=1e-6)
    assert out[1, 0, 0] == 1.0


def test_sixteen_bit_big_endian_tiff():
    img = Image.new("I;16B", (3, 2), 65535)
    out = imageio.decode_image(encode(img, "TIFF"), "16b")
    check_image(out, 2, 3)
    assert np.all(out == 1.0)


def test_int32_mode_i_clipped():
    values = np.array([[-5, 0, 65535, 100000]], dtype=np.int32)
    img = Image.fromarray(values)
    assert img.mode == "I"
    out = imageio.decode_image(encode(img, "TIFF"), "i32")
    check_image(out, 1, 4)
    np.testing.assert_allclose(out[0, :, 0], [0, 0, 1, 1])


def test_float_tiff_clipped_and_nan_zeroed():
    values = np.array([[-0.5, 0.0, 0.25, 1.0, 3.0, np.nan, np.inf]], dtype=np.float32)
    img = Image.fromarray(values)
    assert img.mode == "F"
    out = imageio.decode_image(encode(img, "TIFF"), "f")
    check_image(out, 1, 7)
    np.testing.assert_allclose(out[0, :, 1], [0, 0, 0.25, 1, 1, 0, 1])


def test_exif_orientation_applied():
    # 2 rows x 3 cols, left column red; orientation 6 = rotate 90 degrees clockwise for display
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[:, 0] = (255, 0, 0)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    out = imageio.decode_image(encode(img, "PNG", exif=exif), "rot")
    check_image(out, 3, 2)
    # after a clockwise quarter turn the left column becomes the top row
    np.testing.assert_allclose(out[0], [[1, 0, 0], [1, 0, 0]])
    assert np.all(out[1:] == 0)


def test_multipage_tiff_first_frame():
    pages = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    out = imageio.decode_image(buf.getvalue(), "multi")
    np.testing.assert_allclose(out, 10 / 255.0, atol=1e-6)


# --- bad bytes -----------------------------------------------------------------------------------------------------

GOOD_PNG = encode(Image.fromarray(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)))
GOOD_JPEG = encode(Image.fromarray(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)), "JPEG")
GOOD_TIFF = encode(Image.fromarray(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)), "TIFF")


@pytest.mark.parametrize(
    "data, label",
    [
        (b"", "empty"),
        (b"hello, this is a text file\n", "text"),
        (b'{"not": "an image"}', "json"),
        (bytes(range(256)), "random"),
        (GOOD_PNG[:40], "png header only"),
        (GOOD_PNG[: len(GOOD_PNG) // 2], "truncated png"),
        (GOOD_JPEG[: len(GOOD_JPEG) // 2], "truncated jpeg"),
        (GOOD_TIFF[: len(GOOD_TIFF) // 2], "truncated tiff"),
        (GOOD_PNG[:100] + b"\x00" * 200 + GOOD_PNG[300:], "corrupt png"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "png magic, garbage"),
    ],
)
@pytest.mark.parametrize("decode", [imageio.decode_image, imageio.decode_mask])
def test_bad_bytes_raise_image_decode_error_naming_source(decode, data, label):
    with pytest.raises(ImageDecodeError, match="s3://bucket/tile_7.png") as info:
        decode(data, "s3://bucket/tile_7.png")
    assert isinstance(info.value, ValueError)  # ImageDecodeError is an InputError, a ValueError


def test_non_bytes_input_is_image_decode_error():
    with pytest.raises(ImageDecodeError, match="src"):
        imageio.decode_image("not bytes", "src")  # type: ignore[arg-type]


def test_pixel_limit(monkeypatch):
    data = encode(Image.new("RGB", (100, 100)))
    monkeypatch.setattr(imageio, "MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(ImageDecodeError, match="MAX_IMAGE_PIXELS") as info:
        imageio.decode_image(data, "big.png")
    assert "big.png" in str(info.value)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (header only): checks must refuse it before allocating anything."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_huge_image_refused_before_decoding():
    with pytest.raises(imageio.ImageTooLargeError, match="MAX_IMAGE_PIXELS") as info:
        imageio.decode_image(_png_header(50_000, 50_000), "scene.png")
    assert "scene.png" in str(info.value) and "2500000000" in str(info.value)
    with pytest.raises(imageio.ImageTooLargeError, match="--max-image-pixels"):  # past Pillow's own check too
        imageio.decode_tile(_png_header(50_000, 50_000), "scene.png", input_side=512)


def test_raising_the_limit_after_import_reaches_pillow(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone would refuse > 2000 pixels
    monkeypatch.setattr(imageio, "MAX_IMAGE_PIXELS", 20_000)
    data = encode(Image.new("RGB", (100, 100), (255, 0, 0)))
    np.testing.assert_array_equal(imageio.decode_image(data, "scene.png")[50, 50], [1, 0, 0])
    assert Image.MAX_IMAGE_PIXELS == 20_000


def test_pillow_limit_raised_for_remote_sensing_scenes():
    assert Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS >= imageio.MAX_IMAGE_PIXELS
    assert imageio.MAX_IMAGE_PIXELS >= 20000 * 20000


# --- masks ---------------------------------------------------------------------------------------------------------

MASK = np.zeros((6, 5), bool)
MASK[1:4, 2:5] = True


MASK_CASES = {
    "1": lambda m: Image.fromarray(m),
    "L255": lambda m: Image.fromarray(m.astype(np.uint8) * 255),
    "L01": lambda m: Image.fromarray(m.astype(np.uint8)),
    "I16": lambda m: Image.fromarray(m.astype(np.uint16) * 7),
    "I": lambda m: Image.fromarray(m.astype(np.int32) * 3),
    "F": lambda m: Image.fromarray(m.astype(np.float32) * 0.5),
    "LA": lambda m: Image.merge("LA", [Image.fromarray(m.astype(np.uint8) * 255), Image.new("L", m.shape[::-1], 255)]),
    "P-index-not-colour": lambda m: _palette(m, index_colours=[(255, 255, 255), (0, 0, 0)]),
    "RGB-any-channel": lambda m: Image.fromarray(np.stack([m * 0, m * 0, m * 9], -1).astype(np.uint8)),
    "RGBA-alpha-ignored": lambda m: Image.fromarray(
        np.dstack([np.stack([m * 200] * 3, -1), np.full(m.shape, 255)]).astype(np.uint8)
    ),
}
PNG_CANNOT = {"I", "F"}  # PNG has no 32-bit int or float modes


@pytest.mark.parametrize(
    "case, fmt",
    [(case, fmt) for case in MASK_CASES for fmt in ("PNG", "TIFF") if not (fmt == "PNG" and case in PNG_CANNOT)],
)
def test_decode_mask_modes(case, fmt):
    img = MASK_CASES[case](MASK)
    out = imageio.decode_mask(encode(img, fmt), "m")
    assert out.dtype == bool and out.shape == MASK.shape
    np.testing.assert_array_equal(out, MASK)


def _palette(mask: np.ndarray, index_colours) -> Image.Image:
    """A P-mode mask whose index 0 (background) is drawn white and index 1 black: decoding must use the index."""
    img = Image.fromarray(mask.astype(np.uint8)).convert("P")
    flat = [c for colour in index_colours for c in colour]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def test_empty_mask_allowed():
    out = imageio.decode_mask(imageio.encode_png_mask(np.zeros((4, 4), bool)), "empty")
    assert out.shape == (4, 4) and not out.any()


# --- encoders and round trips --------------------------------------------------------------------------------------


def test_png_mask_is_single_channel_0_255_and_round_trips():
    data = imageio.encode_png_mask(MASK)
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode == "L"
    assert set(np.unique(np.asarray(img)).tolist()) == {0, 255}
    np.testing.assert_array_equal(imageio.decode_mask(data, "m"), MASK)


def test_png_mask_accepts_01_integers():
    np.testing.assert_array_equal(imageio.decode_mask(imageio.encode_png_mask(MASK.astype(np.uint8)), "m"), MASK)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.float32) + 0.3, np.zeros((4, 4, 1), bool), np.zeros((0, 4), bool), np.full((2, 2), 255)]
)
def test_png_mask_rejects_non_masks(bad):
    with pytest.raises(InputError):
        imageio.encode_png_mask(bad)


def test_png_rgb_round_trip_uint8_and_float():
    np.testing.assert_allclose(imageio.decode_image(imageio.encode_png_rgb(RGB8), "x"), RGB8 / 255.0, atol=1e-6)
    as_float = RGB8.astype(np.float32) / 255.0
    np.testing.assert_allclose(imageio.decode_image(imageio.encode_png_rgb(as_float), "x"), as_float, atol=1e-6)


def test_png_rgb_rejects_wrong_shape():
    with pytest.raises(InputError, match="shape"):
        imageio.encode_png_rgb(np.zeros((4, 4), np.uint8))


def test_read_write_through_storage(tmp_path):
    url = str(tmp_path / "out" / "m.png")
    imageio.write_mask_png(url, MASK)
    np.testing.assert_array_equal(imageio.read_mask(url), MASK)
    img_url = storage.join(f"memory://imageio-tests/{tmp_path.name}", "i.png")
    imageio.write_image_png(img_url, RGB8)
    np.testing.assert_allclose(imageio.read_image(img_url), RGB8 / 255.0, atol=1e-6)


def test_read_image_errors_name_the_url(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageDecodeError, match="bad.png"):
        imageio.read_image(str(tmp_path / "bad.png"))
    with pytest.raises(ObjectNotFoundError, match="missing.png"):
        imageio.read_image(str(tmp_path / "missing.png"))


@pytest.mark.integration
def test_read_write_s3(s3_server):
    so = s3_server["storage_options"]
    url = s3_server["make_bucket"]() + "/masks/m.png"
    imageio.write_mask_png(url, MASK, so)
    np.testing.assert_array_equal(imageio.read_mask(url, so), MASK)


# --- overlay -------------------------------------------------------------------------------------------------------


def test_overlay_fill_and_outline():
    image = np.full((40, 40, 3), 0.5, np.float32)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = imageio.overlay(image, mask, color=(0.0, 1.0, 0.0), alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (40, 40, 3)
    np.testing.assert_array_equal(out[0, 0], [128, 128, 128])  # outside untouched
    np.testing.assert_array_equal(out[20, 20], [64, 192, 64])  # blended fill: 0.5 * 128 + 0.5 * 255
    np.testing.assert_array_equal(out[10, 20], [0, 255, 0])  # boundary at full colour
    np.testing.assert_array_equal(out[29, 29], [0, 255, 0])
    outline = np.all(out == [0, 255, 0], axis=2)
    assert outline.sum() == 4 * 20 - 4  # one-pixel ring at this size
    assert not outline[~mask].any()


def test_overlay_outline_visible_when_alpha_zero_and_at_image_border():
    image = np.zeros((20, 20, 3), np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[:, :5] = True  # touches the image border
    out = imageio.overlay(image, mask, color=(1.0, 0.0, 0.0), alpha=0.0)
    assert np.all(out[:, 0] == [255, 0, 0])
    assert np.all(out[1:-1, 2] == 0)  # interior untouched at alpha 0
    assert np.all(out[0, :5] == [255, 0, 0])  # the image edge closes the outline
    assert np.all(out[:, 4] == [255, 0, 0])


def test_overlay_empty_mask_is_the_image():
    image = RGB8.astype(np.float32) / 255.0
    np.testing.assert_array_equal(imageio.overlay(image, np.zeros((6, 5), bool)), RGB8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mask": np.zeros((5, 5), bool)},
        {"alpha": 1.5},
        {"color": (255, 0, 0)},
        {"color": (1, 0)},
    ],
)
def test_overlay_rejects_bad_arguments(kwargs):
    args = {"image": np.zeros((6, 5, 3), np.float32), "mask": np.zeros((6, 5), bool)} | kwargs
    with pytest.raises(InputError):
        imageio.overlay(**args)


def test_contrast_color_is_the_palette_colour_farthest_from_the_mean():
    red_roofs = np.full((8, 8, 3), (0.7, 0.25, 0.2), np.float32)
    grass = np.full((8, 8, 3), (0.3, 0.55, 0.2), np.float32)
    assert imageio.contrast_color(red_roofs) == (0.0, 1.0, 1.0)  # cyan, not red on red
    assert imageio.contrast_color(grass) == (1.0, 0.0, 1.0)
    assert imageio.contrast_color(np.ones((4, 4, 3), np.float32)) == (0.0, 1.0, 0.0)  # first of the farthest
    assert all(c in imageio.PALETTE for c in map(imageio.contrast_color, (red_roofs, grass)))


def test_overlay_defaults_to_the_contrast_colour():
    image = np.full((20, 20, 3), (0.7, 0.25, 0.2), np.float32)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    out = imageio.overlay(image, mask)
    np.testing.assert_array_equal(out[5, 10], [0, 255, 255])


def test_legend_adds_a_strip_with_a_swatch_and_text_and_widens_for_long_lines():
    image = np.zeros((32, 40, 3), np.uint8)
    out = imageio.legend(image, ["roof", "a_rather_long_file_name.png", "mask 12.5% of pixels"], (1.0, 1.0, 0.0))
    assert out.shape[0] > 32 + 30 and out.shape[1] > 40
    np.testing.assert_array_equal(out[:32, :40], image)  # the image is unchanged above the strip
    strip = out[32:]
    assert np.all(strip == [255, 255, 0], axis=2).any()  # the swatch
    assert (strip == 255).all(axis=2).sum() > 50  # white text


# --- decode_tile: the pixel count checked from the header, large tiles decoded at the size used -------------------


def _gradient(h: int, w: int) -> np.ndarray:
    """A smooth RGB uint8 image (box averages of it are close to any other anti-aliased resize)."""
    x = (np.arange(w) * 255 // max(w - 1, 1)).astype(np.uint8)[None, :]
    y = (np.arange(h) * 255 // max(h - 1, 1)).astype(np.uint8)[:, None]
    mixed = ((x.astype(np.uint16) + y) // 2).astype(np.uint8)
    return np.stack(np.broadcast_arrays(x, y, mixed), -1)


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Means of ``factor`` x ``factor`` blocks (the partial last row/column of blocks left out)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return image[: h * factor, : w * factor].reshape(h, factor, w, factor, -1).mean(axis=(1, 3))


def test_decode_tile_of_a_small_tile_is_decode_image():
    data = encode(Image.fromarray(RGB8))
    image, source_hw = imageio.decode_tile(data, "t.png", input_side=64)
    np.testing.assert_array_equal(image, imageio.decode_image(data, "t.png"))
    assert source_hw == (6, 5)


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGB"), ("JPEG", "RGB"), ("PNG", "P"), ("PNG", "1"), ("PNG", "I;16"),
                                       ("TIFF", "F"), ("PNG", "LA")])
def test_decode_tile_reduces_a_large_tile_to_at_least_the_input_side(fmt, mode):
    rgb = _gradient(600, 1000)
    if mode == "RGB":
        img = Image.fromarray(rgb)
    elif mode == "P":
        img = Image.fromarray(rgb).quantize(64, method=Image.Quantize.FASTOCTREE)
    elif mode == "1":
        img = Image.fromarray(rgb[..., 0]).point(lambda v: 255 if v > 127 else 0).convert("1")
    elif mode == "I;16":
        img = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
    elif mode == "F":
        img = Image.fromarray(rgb[..., 1].astype(np.float32) / 255.0)
    else:
        img = Image.fromarray(np.stack([rgb[..., 0], rgb[..., 1]], -1), "LA")
    data = encode(img, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    full = imageio.decode_image(data, "big")
    image, source_hw = imageio.decode_tile(data, "big", input_side=100)
    assert source_hw == (600, 1000)
    assert image.dtype == np.float32 and image.shape[2] == 3 and image.flags.c_contiguous
    assert 100 <= min(image.shape[:2]) < 200  # reduced, never below what the backbone sees
    assert image.shape[1] / image.shape[0] == pytest.approx(1000 / 600, rel=0.02)  # aspect kept
    # the same picture as the full decode brought to that size (JPEG's DCT scaling and box filters differ a little)
    factor = round(600 / image.shape[0])
    expected = _block_mean(full, factor)
    got = image[: expected.shape[0], : expected.shape[1]]
    assert np.abs(got - expected).mean() < (0.03 if fmt == "JPEG" else 0.01)


def test_decode_tile_jpeg_is_decoded_smaller_by_the_decoder():
    data = encode(Image.fromarray(_gradient(1600, 1200)), "JPEG", quality=90)
    image, source_hw = imageio.decode_tile(data, "big.jpg", input_side=128)
    assert source_hw == (1600, 1200) and min(image.shape[:2]) == 150  # DCT scaling by 1/8: 200x150


def test_decode_tile_source_size_follows_the_exif_orientation():
    img = Image.fromarray(_gradient(300, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    data = encode(img, "JPEG", exif=exif.tobytes())
    image, source_hw = imageio.decode_tile(data, "phone.jpg", input_side=64)
    assert source_hw == (800, 300) and image.shape[0] > image.shape[1]


def test_tile_pixel_limit_derived_from_the_input_side_or_given():
    assert imageio.max_tile_pixels(64) == imageio.TILE_PIXELS_FACTOR * 64 * 64
    assert imageio.max_tile_pixels(64, 5000) == 5000  # the run option wins, both ways
    assert imageio.max_tile_pixels(100_000) == imageio.MAX_IMAGE_PIXELS
    assert imageio.max_tile_pixels(None) == imageio.MAX_IMAGE_PIXELS
    with pytest.raises(InputError, match="max_image_pixels"):
        imageio.max_tile_pixels(64, 0)


def test_decode_tile_refuses_from_the_header_naming_file_size_and_option():
    side = 64
    limit = imageio.TILE_PIXELS_FACTOR * side * side
    with pytest.raises(imageio.ImageTooLargeError) as info:
        imageio.decode_tile(_png_header(1025, 1024), "s3://lake/tiles/huge.png", input_side=side)
    message = str(info.value)
    assert isinstance(info.value, ImageDecodeError) and isinstance(info.value, InputError)
    assert "s3://lake/tiles/huge.png" in message and "1025x1024" in message and f"{limit:,}" in message
    assert "max_image_pixels" in message and "--max-image-pixels" in message
    # within the limit the header-only PNG gets as far as decoding (and is then corrupt, not too large)
    with pytest.raises(ImageDecodeError) as info:
        imageio.decode_tile(_png_header(1024, 1024), "ok.png", input_side=side)
    assert not isinstance(info.value, imageio.ImageTooLargeError)
    # the run option raises the limit
    with pytest.raises(ImageDecodeError) as info:
        imageio.decode_tile(_png_header(1025, 1024), "ok.png", input_side=side, max_pixels=2**21)
    assert not isinstance(info.value, imageio.ImageTooLargeError)


def test_undecodable_bytes_are_described_not_shown():
    data = b"SECRET-FILE-CONTENT: root:x:0:0:root:/root:/bin/bash\n"
    with pytest.raises(ImageDecodeError) as info:
        imageio.decode_image(data, "s3://lake/refs/a.png")
    message = str(info.value)
    assert f"{len(data)} bytes" in message and "PNG, JPEG, TIFF" in message
    assert "SECRET" not in message and "root" not in message


# The peak is the process's own VmHWM: getrusage's ru_maxrss in a child starts at its parent's peak (Linux keeps
# the pre-exec high-water mark), which would hide any growth below the size of the test process.
_PEAK_SCRIPT = """
import sys
from dinoseg_core.io import imageio

def peak_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

data = open(sys.argv[1], "rb").read()
before = peak_kb()
image, source_hw = imageio.decode_tile(data, sys.argv[1], input_side=int(sys.argv[2]), max_pixels=2**26)
print(peak_kb() - before, image.shape[0], image.shape[1], source_hw[0], source_hw[1])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")
@pytest.mark.parametrize("mode, bytes_per_pixel", [("RGB", 3), ("I;16", 2)])
def test_decode_tile_peak_memory_stays_near_the_8_or_16_bit_decode(tmp_path, mode, bytes_per_pixel):
    """A 3000 x 3000 tile: the old float32 RGB decode needed >= 12 bytes a pixel (108 MB); decode_tile holds the
    file's own bit depth (RGB 3, 16-bit grey 2 + 4 for Pillow's 32-bit copy) and a float32 copy at ~1/16 the pixels."""
    import subprocess
    import sys

    side = 3000
    if mode == "RGB":
        img = Image.fromarray(_gradient(side, side))
    else:
        img = Image.fromarray((_gradient(side, side)[..., 0].astype(np.uint16) * 257))
    path = tmp_path / "big.png"
    img.save(path, compress_level=1)
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path), "416"], check=True, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    grown_kb, h, w, source_h, source_w = map(int, done.stdout.split())
    assert (source_h, source_w) == (side, side) and (h, w) == (429, 429)  # 3000 / 7, rounded up
    pixels = side * side
    assert grown_kb * 1024 < (bytes_per_pixel + 4) * pixels + 32 * 2**20, f"grew {grown_kb / 1024:.0f} MB"
    assert grown_kb * 1024 < 8 * pixels  # decode_image needs 17-18 bytes a pixel (bench/decode_memory.py)
