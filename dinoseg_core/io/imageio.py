"""Image and mask decoding/encoding with Pillow, plus a visual overlay. Bytes in, arrays out.

Images decode to ``float32 (H, W, 3)`` in ``[0, 1]``; masks decode to ``bool (H, W)``. The rules, per Pillow mode:

============================  =====================================================================================
mode                          image (:func:`decode_image`)
============================  =====================================================================================
``1``, ``L``                  grey level / 255, replicated to 3 channels
``LA``                        grey level / 255 replicated; **alpha dropped**
``P``, ``PA``                 palette colours (RGB); palette transparency and alpha **dropped**
``RGB``                       / 255
``RGBA``, ``RGBX``, ``RGBa``  first three channels / 255; **alpha dropped** (transparent pixels keep their colour
                              values, whatever those are; nothing is composited onto a background)
``CMYK``, ``YCbCr``, ``LAB``  Pillow's conversion to RGB (no ICC colour management)
``I;16*`` (16-bit)            / 65535, replicated
``I`` (32-bit int)            treated as 16-bit: / 65535, clipped to [0, 1], replicated
``F`` (32-bit float)          clipped to [0, 1] (NaN -> 0, +inf -> 1), replicated
============================  =====================================================================================

The EXIF orientation tag is applied (a phone photo comes out upright) for images and masks alike. Multi-frame
files (multi-page TIFF, animated GIF/PNG) give their first frame. Multi-band rasters beyond what Pillow reads
(e.g. 4+ band uint16 GeoTIFFs) are not handled here.

Masks (:func:`decode_mask`): ``1``/``L``/``LA``/``P``/``I``/``F`` modes: the first channel (the palette *index*
for ``P``) ``> 0``; ``RGB``/``RGBA`` and other colour modes: any colour channel ``> 0`` (alpha ignored). An
all-zero mask is returned as is; deciding what an empty mask means is the caller's job.

Decompression bombs: Pillow refuses images over ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (~179 Mpx by default), too
small for remote-sensing scenes. Importing this module raises Pillow's process-wide limit to
:data:`MAX_IMAGE_PIXELS` (2**30, e.g. 32768 x 32768, whose float32 decode needs ~12.9 GB) and this module itself
refuses anything larger with an :class:`ImageDecodeError` that says how to proceed. Change the limit by
assigning ``dinoseg_core.io.imageio.MAX_IMAGE_PIXELS``; tile larger scenes instead of decoding them whole.

Tiles for a model (:func:`decode_tile`) have a tighter limit, :func:`max_tile_pixels`: the run's
``max_image_pixels``, else :data:`TILE_PIXELS_FACTOR` (256) times the model's square input (a 30000 x 30000 PNG of
0.9 MB is refused from its header, before a byte is decoded, with an :class:`ImageTooLargeError`). Tiles within it
but at least twice the input a side are decoded reduced by a whole factor (JPEG by DCT scaling in the decoder,
others in their own bit depth, then a box average), so a float32 copy exists only near the model's size.

Errors describe undecodable bytes (their length, the formats expected) and never show them.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dinoseg_core.errors import ImageDecodeError, InputError
from dinoseg_core.io import storage

__all__ = [
    "MAX_IMAGE_PIXELS",
    "PALETTE",
    "TILE_PIXELS_FACTOR",
    "ImageTooLargeError",
    "check_pixels",
    "contrast_color",
    "decode_image",
    "decode_mask",
    "decode_tile",
    "encode_png_mask",
    "encode_png_rgb",
    "legend",
    "max_tile_pixels",
    "overlay",
    "read_image",
    "read_mask",
    "read_tile",
    "write_image_png",
    "write_mask_png",
]

MAX_IMAGE_PIXELS: int = 2**30
"""Largest image (width * height) this module decodes; larger ones raise :class:`ImageDecodeError`."""

TILE_PIXELS_FACTOR: int = 256
"""A tile may have this many times the pixels of the backbone's square input (:func:`max_tile_pixels`)."""



#: Extensions of rasters read through rasterio (GeoTIFF/COG and friends) rather than Pillow.
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")

def _raise_pillow_limit(limit: int | None = None) -> None:
    # Pillow errors above 2x its limit and warns above 1x; we check our own limit first, so Pillow's must not be
    # lower. Called again at each decode in case MAX_IMAGE_PIXELS was raised after import.
    limit = max(MAX_IMAGE_PIXELS, limit or 0)
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit


_raise_pillow_limit()

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


class ImageTooLargeError(ImageDecodeError):
    """An image's header declares more pixels than may be decoded (checked before anything is decoded)."""


def max_tile_pixels(input_side: int | None = None, max_pixels: int | None = None) -> int:
    """The most pixels a tile may have: ``max_pixels`` when given, else :data:`TILE_PIXELS_FACTOR` times the
    backbone's ``input_side`` squared (a side 16 times the model's; 2**26 at 512 px), capped by
    :data:`MAX_IMAGE_PIXELS`; with neither, :data:`MAX_IMAGE_PIXELS`."""
    if max_pixels is not None:
        if int(max_pixels) < 1:
            raise InputError(f"max_image_pixels={max_pixels}: give a number of pixels of at least 1")
        return int(max_pixels)
    if input_side is None:
        return MAX_IMAGE_PIXELS
    return min(MAX_IMAGE_PIXELS, TILE_PIXELS_FACTOR * int(input_side) ** 2)


def check_pixels(name: str, width: int, height: int, max_pixels: int,
                 why: str = "this run's limit: max_image_pixels, or 256 x the backbone's input") -> None:
    """Raise :class:`ImageTooLargeError` naming ``name``, its size and the option to raise when ``width x height``
    is over ``max_pixels`` (for sizes read from metadata, e.g. a raster's)."""
    if width * height > max_pixels:
        raise _too_large(name, width, height, max_pixels, why)


def _too_large(name: str, width: int, height: int, limit: int, why: str) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"{name}: {width}x{height} = {width * height:,} pixels, more than the {limit:,} allowed ({why}); nothing "
        "was decoded. Raise the run option max_image_pixels (--max-image-pixels) if memory allows (a tile needs "
        "about 4 bytes per pixel while it is decoded), cut the image into tiles, or give it as a GeoTIFF/COG, "
        "which is read window by window."
    )


def _reducible(img: Image.Image) -> Image.Image:
    """``img`` in a mode :meth:`PIL.Image.Image.reduce` averages correctly, with what :func:`_to_rgb` reads
    kept: palettes become their colours, ``1`` grey levels, 16-bit ``I`` (still integers, read / 65535)."""
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in _SIXTEEN_BIT:
        return img.convert("I")
    if mode in ("P", "PA") and ("transparency" in img.info or mode == "PA"):
        return img.convert("RGBA")
    return img.convert("RGB")


def _open(data: bytes | bytearray | memoryview, name: str, *, limit: int | None = None,
          limit_why: str = "dinoseg_core.io.imageio.MAX_IMAGE_PIXELS", fit_side: int | None = None
          ) -> tuple[Image.Image, tuple[int, int]]:
    """Open, size-check (from the header), fully decode and orient an image: ``(image, (H, W) of the file,
    oriented)``; every failure becomes ImageDecodeError naming ``name``. ``fit_side``: decode an image whose
    shorter side is 2x this or more reduced by a whole factor, keeping the shorter side >= ``fit_side`` (JPEG:
    in the decoder)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"{name}: expected the image file's bytes, got {type(data).__name__}.")
    if len(data) == 0:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes); re-export or re-download it.")
    limit = MAX_IMAGE_PIXELS if limit is None else limit
    _raise_pillow_limit(limit)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > limit:
                raise _too_large(name, width, height, limit, limit_why)
            if width == 0 or height == 0:
                raise ImageDecodeError(f"{name}: the image has no pixels ({width}x{height}).")
            img.seek(0)
            factor = min(width, height) // fit_side if fit_side else 1
            if factor >= 2 and img.format == "JPEG":
                img.draft(None, (fit_side, fit_side))  # DCT scaling: 1/2, 1/4 or 1/8 of the pixels are decoded
            img.load()  # decode now, so truncation is caught here and not later
            factor = min(img.size) // fit_side if fit_side else 1
            if factor >= 2:
                img = _reducible(img).reduce(factor)  # box average of factor x factor blocks, before any float copy
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"{name}: not an image Pillow can read ({len(data):,} bytes; expected PNG, JPEG, TIFF or another "
            "format Pillow reads). Check that the file is the image you meant."
        ) from exc
    except Image.DecompressionBombError as exc:  # Pillow's own check, past 2 x MAX_IMAGE_PIXELS
        raise ImageTooLargeError(
            f"{name}: {exc} Nothing was decoded. Cut the image into tiles or give it as a GeoTIFF/COG, which is read "
            "window by window (the largest image decoded whole is dinoseg_core.io.imageio.MAX_IMAGE_PIXELS; a run's "
            "tiles are limited by max_image_pixels, --max-image-pixels)."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error) as exc:
        raise ImageDecodeError(
            f"{name}: the image is corrupt or truncated ({type(exc).__name__}: {exc}). Re-export or re-download it."
        ) from exc
    try:
        oriented = ImageOps.exif_transpose(img)
    except Exception as exc:  # a broken EXIF block should not make a good image unreadable
        warnings.warn(f"{name}: ignoring unreadable EXIF orientation ({type(exc).__name__}: {exc})", stacklevel=3)
        oriented = None
    if oriented is None or oriented.size == img.size:
        return img if oriented is None else oriented, (height, width)
    return oriented, (width, height)  # rotated a quarter turn


def decode_image(data: bytes | bytearray | memoryview, name: str = "<bytes>", *,
                 max_pixels: int | None = None) -> np.ndarray:
    """Decode image file bytes (PNG, JPEG, TIFF, ...) to ``float32 (H, W, 3)`` in ``[0, 1]``.

    See the module docstring for the per-mode rules (grey replicated, alpha dropped, 16-bit / 65535, float
    clipped, EXIF orientation applied).

    Args:
        data: the file's bytes.
        name: what to call the source in error messages (a URL or file name).
        max_pixels: the most pixels allowed, checked from the header (e.g. :func:`max_tile_pixels`); None:
            :data:`MAX_IMAGE_PIXELS`.

    Raises:
        ImageDecodeError: empty, truncated, corrupt or non-image bytes, or an image over the limit
            (:class:`ImageTooLargeError`).
    """
    return _to_rgb(_open(data, name, **_limit(max_pixels))[0], name)


def _limit(max_pixels: int | None) -> dict[str, Any]:
    if max_pixels is None:
        return {}
    return {"limit": int(max_pixels), "limit_why": "this run's limit: max_image_pixels, or 256 x the backbone's input"}


def decode_tile(data: bytes | bytearray | memoryview, name: str = "<bytes>", *, max_pixels: int | None = None,
                input_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a tile for a backbone that sees at most ``input_side`` pixels a side, in memory bounded by its
    size: ``(float32 (h, w, 3) in [0, 1], (H, W) of the file)``.

    The pixel count is checked from the header before anything is decoded (:func:`max_tile_pixels`). A tile
    whose shorter side is at least twice ``input_side`` is decoded reduced by a whole factor (JPEG: by the
    decoder's DCT scaling; others: 8-bit, or 32-bit for 16-bit files, then a box average), so that its shorter
    side stays >= ``input_side`` and the backbone's own resize does the rest; a float32 copy exists only at that
    size. Smaller tiles decode exactly as :func:`decode_image`. Masks made on ``h, w`` are resized to ``H, W``
    by the caller.

    Raises:
        ImageTooLargeError: more pixels than allowed; the message names ``name``, its size and the option to raise.
        ImageDecodeError: as :func:`decode_image`.
    """
    limit = max_tile_pixels(input_side, max_pixels)
    why = ("the run option max_image_pixels" if max_pixels is not None else
           f"{TILE_PIXELS_FACTOR} x the backbone's {input_side}x{input_side} input" if input_side else
           "dinoseg_core.io.imageio.MAX_IMAGE_PIXELS")
    img, source_hw = _open(data, name, limit=limit, limit_why=why, fit_side=input_side)
    return _to_rgb(img, name), source_hw


def _to_rgb(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    try:
        if mode in _SIXTEEN_BIT:
            grey = np.asarray(img).astype(np.float32) / np.float32(65535.0)
        elif mode == "I":
            grey = np.clip(np.asarray(img).astype(np.float32) / np.float32(65535.0), 0.0, 1.0)
        elif mode == "F":
            grey = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
            grey = np.clip(grey, 0.0, 1.0)
        elif mode == "1":
            grey = np.asarray(img, dtype=np.float32)
        elif mode in ("L", "LA"):
            grey = np.asarray(img.getchannel(0), dtype=np.float32) / np.float32(255.0)
        else:
            if mode in ("P", "PA") and ("transparency" in img.info or mode == "PA"):
                img = img.convert("RGBA")  # Pillow's documented path for palette transparency; alpha dropped below
            elif mode not in ("RGB", "RGBA", "RGBX"):
                img = img.convert("RGB")
            rgb = np.asarray(img)[..., :3].astype(np.float32) / np.float32(255.0)
            return np.ascontiguousarray(rgb)
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot convert a '{mode}' image to RGB ({exc}).") from exc
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2), dtype=np.float32)


def decode_mask(data: bytes | bytearray | memoryview, name: str = "<bytes>", *,
                max_pixels: int | None = None) -> np.ndarray:
    """Decode mask file bytes to ``bool (H, W)``.

    ``1``/``L``/``LA``/``P``/``I``/``I;16``/``F``: first channel ``> 0`` (``P``: the palette index, so index 0 is
    background whatever its colour; ``LA``: alpha ignored). ``RGB``/``RGBA`` and other colour modes: any colour
    channel ``> 0`` (alpha ignored). All-zero masks are allowed. EXIF orientation is applied.

    Raises:
        ImageDecodeError: empty, truncated, corrupt or non-image bytes, or more than ``max_pixels`` (as
            :func:`decode_image`).
    """
    img = _open(data, name, **_limit(max_pixels))[0]
    mode = img.mode
    try:
        if mode in ("1", "L", "P", "I", "F") or mode in _SIXTEEN_BIT:
            values = np.asarray(img)
            if mode == "F":
                values = np.nan_to_num(values, nan=0.0)
            return np.ascontiguousarray(values > 0)
        if mode in ("LA", "PA"):
            return np.ascontiguousarray(np.asarray(img.getchannel(0)) > 0)
        if mode not in ("RGB", "RGBA", "RGBX"):
            img = img.convert("RGB")
        return np.ascontiguousarray((np.asarray(img)[..., :3] > 0).any(axis=2))
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot read a mask from a '{mode}' image ({exc}).") from exc


def read_image(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None, *,
               max_pixels: int | None = None) -> np.ndarray:
    """Read and decode the image at ``url``: ``float32 (H, W, 3)`` in ``[0, 1]`` (see :func:`decode_image`).

    Raises:
        ObjectNotFoundError / StorageError: from :func:`dinoseg_core.io.storage.read_bytes`.
        ImageDecodeError: the object is not a readable image, or has more than ``max_pixels``; the message names
            ``url``.
    """
    return decode_image(storage.read_bytes(url, storage_options), name=storage.display_url(url),
                        max_pixels=max_pixels)


def read_tile(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None, *,
              max_pixels: int | None = None, input_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Read and decode the tile at ``url`` for a model of ``input_side`` (see :func:`decode_tile`): ``(float32
    (h, w, 3), (H, W) of the file)``."""
    return decode_tile(storage.read_bytes(url, storage_options), storage.display_url(url), max_pixels=max_pixels,
                       input_side=input_side)


def read_mask(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None, *,
              max_pixels: int | None = None) -> np.ndarray:
    """Read and decode the mask at ``url``: ``bool (H, W)`` (see :func:`decode_mask`)."""
    return decode_mask(storage.read_bytes(url, storage_options), name=storage.display_url(url), max_pixels=max_pixels)


def _as_bool_mask(mask: Any, what: str = "mask") -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"{what} must be a non-empty 2-D (H, W) array, got shape {arr.shape}.")
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and np.isin(arr, (0, 1)).all():
        return arr.astype(bool)
    raise InputError(
        f"{what} must be a bool (H, W) array (or integers 0/1), got dtype {arr.dtype}; threshold it first, "
        "e.g. mask = scores > 0.5."
    )


def encode_png_mask(mask: np.ndarray) -> bytes:
    """Encode a ``bool (H, W)`` mask as a single-channel 8-bit PNG with values 0 and 255."""
    arr = _as_bool_mask(mask)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8) * np.uint8(255)).save(buf, format="PNG")
    return buf.getvalue()


def _as_rgb_uint8(image: Any, what: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{what} must be an (H, W, 3) array, got shape {arr.shape}.")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        return np.ascontiguousarray(np.round(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8))
    raise InputError(f"{what} must be uint8 or float in [0, 1], got dtype {arr.dtype}.")


def encode_png_rgb(image: np.ndarray) -> bytes:
    """Encode an RGB image as an 8-bit PNG. ``image``: ``uint8 (H, W, 3)``, or float ``(H, W, 3)`` in ``[0, 1]``
    (clipped, rounded to the nearest of 256 levels)."""
    buf = io.BytesIO()
    Image.fromarray(_as_rgb_uint8(image)).save(buf, format="PNG")
    return buf.getvalue()


def write_mask_png(
    url: str | os.PathLike[str], mask: np.ndarray, storage_options: dict[str, Any] | None = None
) -> None:
    """Write a ``bool (H, W)`` mask to ``url`` as a 0/255 single-channel PNG (atomically where the backend allows)."""
    storage.write_bytes(url, encode_png_mask(mask), storage_options)


def write_image_png(
    url: str | os.PathLike[str], image: np.ndarray, storage_options: dict[str, Any] | None = None
) -> None:
    """Write an RGB image (``uint8 (H, W, 3)`` or float in ``[0, 1]``) to ``url`` as an 8-bit PNG."""
    storage.write_bytes(url, encode_png_rgb(image), storage_options)


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion; outside the image counts as background, so masks touching the border get an
    outline there too."""
    out = mask.copy()
    out[1:, :] &= mask[:-1, :]
    out[:-1, :] &= mask[1:, :]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    out[0, :] = False
    out[-1, :] = False
    out[:, 0] = False
    out[:, -1] = False
    return out


#: High-contrast overlay colours (RGB in [0, 1]): yellow, cyan, magenta, lime, red, blue. No white or black: they
#: vanish on bright roofs and shadows.
PALETTE: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0),
)


def contrast_color(image: np.ndarray) -> tuple[float, float, float]:
    """The :data:`PALETTE` colour farthest (Euclidean, RGB) from ``image``'s mean colour, so that a mask drawn on
    it stands out: cyan on red roofs, magenta on grass. ``image``: ``float (H, W, 3)`` in ``[0, 1]`` or ``uint8``."""
    mean = _as_rgb_uint8(image).reshape(-1, 3).mean(axis=0) / 255.0
    return max(PALETTE, key=lambda c: float(np.sum((np.asarray(c) - mean) ** 2)))


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[float, float, float] | None = None,
    alpha: float = 0.4,
    outline_width: int | None = None,
) -> np.ndarray:
    """Tint ``mask`` on ``image`` for viewing: ``uint8 (H, W, 3)``.

    Inside the mask, ``(1 - alpha) * image + alpha * color``; the mask's boundary (pixels of the mask within
    ``outline_width`` of a non-mask pixel or the image edge) is drawn in ``color`` at full opacity, so the extent
    stays visible at any ``alpha``.

    Args:
        image: ``float (H, W, 3)`` in ``[0, 1]`` (``uint8`` is accepted too).
        mask: ``bool (H, W)``, same ``H, W`` as ``image``.
        color: RGB in ``[0, 1]``; default :func:`contrast_color` of ``image``.
        alpha: fill opacity in ``[0, 1]``.
        outline_width: boundary thickness in pixels; default ``max(1, min(H, W) // 256)``.
    """
    rgb = _as_rgb_uint8(image).astype(np.float32) / 255.0
    m = _as_bool_mask(mask)
    if m.shape != rgb.shape[:2]:
        raise InputError(f"mask shape {m.shape} does not match image shape {rgb.shape[:2]}.")
    col = np.asarray(contrast_color(rgb) if color is None else color, dtype=np.float32)
    if col.shape != (3,) or not np.all((col >= 0) & (col <= 1)):
        raise InputError(f"color must be 3 floats in [0, 1], got {color!r}.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha!r}.")
    width = max(1, min(m.shape) // 256) if outline_width is None else int(outline_width)
    if width < 0:
        raise InputError(f"outline_width must be >= 0, got {outline_width!r}.")

    out = rgb.copy()
    out[m] = (1.0 - float(alpha)) * rgb[m] + float(alpha) * col
    if width > 0:
        inner = m
        for _ in range(width):
            inner = _erode(inner)
        out[m & ~inner] = col
    return np.round(out * 255.0).astype(np.uint8)


def legend(
    image: np.ndarray, lines: list[str], color: tuple[float, float, float], background: tuple[int, int, int] = (24, 24, 24)
) -> np.ndarray:
    """``image`` with a legend strip below it: a swatch of ``color`` and one text line each of ``lines`` (Pillow's
    default font), on a dark ``background``; ``uint8 (H + strip, max(W, legend width), 3)``. The canvas is widened
    (on the right, in ``background``) where the text is wider than the image, so no line is cut.

    Args:
        image: ``uint8 (H, W, 3)`` or float in ``[0, 1]``, e.g. an :func:`overlay`.
        lines: text, e.g. the concept, the source file name and the mask area.
        color: the overlay colour, RGB in ``[0, 1]``.
    """
    from PIL import ImageDraw, ImageFont

    rgb = _as_rgb_uint8(image)
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [draw.textbbox((0, 0), line, font=font) for line in lines]
    line_height = max([b[3] - b[1] for b in boxes] + [10]) + 4
    pad, swatch = 6, line_height
    strip = 2 * pad + line_height * max(1, len(lines))
    width = max(rgb.shape[1], 3 * pad + swatch + max([b[2] for b in boxes] + [0]))
    canvas = Image.new("RGB", (width, rgb.shape[0] + strip), background)
    canvas.paste(Image.fromarray(rgb), (0, 0))
    pen = ImageDraw.Draw(canvas)
    top = rgb.shape[0] + pad
    fill = tuple(int(round(255 * c)) for c in color)
    pen.rectangle([pad, top, pad + swatch - 1, top + swatch - 1], fill=fill, outline=(255, 255, 255))
    for index, line in enumerate(lines):
        pen.text((2 * pad + swatch, top + index * line_height), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)
