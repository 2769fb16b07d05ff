"""Reading GeoTIFF / Cloud-Optimised GeoTIFF scenes window by window with rasterio (GDAL).

:func:`open_raster` reads a scene's header and its per-band scaling once and returns a :class:`RasterSource`, a
small frozen value (picklable: a flow can hand it to any worker); :func:`read_window` reads one pixel window of it
as the method's input, ``float32 (h, w, 3)`` in ``[0, 1]`` plus a ``bool (h, w)`` validity mask. Nothing here ever
reads the whole scene at full resolution.

Storage (same URL + ``storage_options`` as the rest of dinoseg, see :mod:`dinoseg_core.io.storage`):

- local paths and ``file://``: opened in place;
- ``s3://``: GDAL's own ``/vsis3/`` driver (ranged reads, block cache), configured from ``storage_options``
  (credentials through rasterio's ``AWSSession``, which needs boto3; without boto3 through s3fs as below):
  ``key``/``secret``/``token`` -> ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
  ``endpoint_url`` (or ``client_kwargs.endpoint_url``, or ``$AWS_ENDPOINT_URL``) -> ``AWS_S3_ENDPOINT`` without
  its scheme, ``AWS_HTTPS=NO`` for ``http://`` endpoints and ``AWS_VIRTUAL_HOSTING=FALSE`` (path-style, as
  MinIO/Ceph/moto want), ``client_kwargs.region_name`` -> ``AWS_REGION``, ``anon=True`` ->
  ``AWS_NO_SIGN_REQUEST=YES``. Without keys GDAL uses its usual chain (environment, ``~/.aws``, instance role);
- ``http(s)://``: GDAL's ``/vsicurl/``;
- anything else fsspec knows (``memory://``, ``gs://``, ...): through an fsspec file object (rasterio's
  ``opener``), with ``storage_options`` passed to fsspec.

Bands are 1-based as in rasterio and GDAL: ``bands=(4, 3, 2)`` makes an RGB image of a Sentinel-2-like stack; a
single band (``bands=(1,)``) is replicated to three channels. By default: bands (1, 2, 3) of a 3+ band file
(alpha bands skipped), band 1 replicated for a 1-2 band file.

Scaling (``radiometry``, :mod:`dinoseg_core.io.radiometry`): one ``(low, high)`` range per selected band, fixed
when the scene is opened, so that every window of a scene is scaled identically (a per-window stretch would make
seams): ``low -> 0``, ``high -> 1``, clipped.

- ``scene-percentile`` (default): ``uint8`` data is divided by 255 (it is display-ready already); any other type
  gets the 2nd-98th percentiles of each band's valid pixels, computed from one decimated read whose longer side is
  ``sample_size`` px (default 1024; GDAL serves it from the file's overviews when it has them, as a COG does, else
  it samples every block once, without holding the scene), nearest resampling so the sample is an unbiased subset
  of pixels;
- ``collection-percentile``: the same percentiles, computed once for a whole collection by
  :func:`collection_radiometry` from a bounded sample of every scene (overviews where the file has them, else a
  grid of small full-resolution windows), then the same ranges for every scene;
- ``fixed:LOW,HIGH`` (one range, or one per band), ``scale:FACTOR[,OFFSET]`` and ``none`` (8-bit only).

Validity: a pixel is valid when every selected band is valid in GDAL's mask (the file's nodata value, an internal
mask band or an alpha band) and finite. Invalid pixels read as 0 in the image, and callers set them to False in
predicted masks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from dinoseg_core.errors import ImageDecodeError, InputError, MissingDependencyError, ObjectNotFoundError
from dinoseg_core.io import storage
from dinoseg_core.io.radiometry import DEFAULT_PERCENTILES, DEFAULT_RADIOMETRY, EIGHT_BIT, Radiometry, percentile_ranges

try:  # rasterio is the optional "geo" extra
    import rasterio
    from rasterio.crs import CRS
    from rasterio.enums import ColorInterp, Resampling
    from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
    from rasterio.transform import Affine
    from rasterio.windows import Window
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        "rasterio", "Reading GeoTIFF/COG scenes (dinoseg_core.geo)", "rasterio>=1.4,<1.5"
    ) from exc

__all__ = [
    "DEFAULT_PERCENTILES",
    "RasterReader",
    "RasterSource",
    "Window",
    "collection_radiometry",
    "gdal_env_options",
    "open_raster",
    "raster_reader",
    "read_overview",
    "read_reference",
    "read_window",
    "window_bounds_to_pixels",
]

#: Longer side (px) of the decimated read the stretch statistics come from; for a collection stretch, the pooled
#: sample of all scenes is about this size squared.
DEFAULT_SAMPLE_SIZE = 1024
#: A collection stretch samples each scene from at least this many px along its longer side.
MIN_COLLECTION_SAMPLE = 64
#: Without overviews, a collection stretch reads a grid of this many x this many small windows of a scene.
COLLECTION_GRID = 8


@dataclass(frozen=True)
class RasterSource:
    """A scene opened for windowed reading: everything :func:`read_window` needs, nothing read yet.

    Attributes:
        url: the scene's URL as given (``/data/scene.tif``, ``s3://bucket/scene.tif``, ...).
        bands: the selected bands, 1-based, as given (1 or 3 of them; one band is replicated to RGB).
        stretch: ``(low, high)`` per selected band: ``low`` maps to 0 and ``high`` to 1 (clipped).
        crs: the coordinate reference system, or None for a file without one.
        transform: the affine pixel -> CRS transform (the identity for a file without georeferencing).
        width, height: the scene size in pixels.
        nodata: the file's nodata value (of the first selected band), or None.
        dtype: the file's data type (``"uint16"``, ...).
        count: the number of bands in the file.
        radiometry: the canonical text of the radiometry ``stretch`` came from (``scene-percentile``, ...).
        storage_options: fsspec-style options (credentials, endpoint); never shown in repr or messages.
    """

    url: str
    bands: tuple[int, ...]
    stretch: tuple[tuple[float, float], ...]
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    nodata: float | None
    dtype: str
    count: int
    radiometry: str = DEFAULT_RADIOMETRY
    storage_options: dict[str, Any] | None = field(default=None, repr=False, compare=False, hash=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width

    @property
    def georeferenced(self) -> bool:
        """Whether the file has a CRS and a non-identity geotransform."""
        return self.crs is not None and not self.transform.is_identity

    @property
    def display_url(self) -> str:
        return storage.display_url(self.url)

    def require_georeferencing(self, purpose: str = "this operation") -> None:
        """Raise :class:`InputError` unless the scene has a CRS and a geotransform."""
        if self.crs is None or self.transform.is_identity:
            missing = " and ".join(
                what for what, gone in (("a CRS", self.crs is None), ("a geotransform", self.transform.is_identity))
                if gone
            )
            raise InputError(
                f"{self.display_url} has no georeferencing ({missing} missing), which {purpose} needs. Use a "
                "GeoTIFF/COG with a CRS and a geotransform (e.g. `gdal_translate -a_srs EPSG:32633 -a_ullr ...`), "
                "or process it as a plain image."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description for provenance attributes (no storage options)."""
        return {
            "url": self.display_url, "bands": list(self.bands), "stretch": [list(p) for p in self.stretch],
            "crs_wkt": self.crs.to_wkt() if self.crs is not None else None, "transform": list(self.transform)[:6],
            "width": self.width, "height": self.height, "nodata": self.nodata, "dtype": self.dtype,
            "count": self.count, "radiometry": self.radiometry,
        }


# ------------------------------------------------------------------------------------------------- opening


def gdal_env_options(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """GDAL configuration options that let ``/vsis3/`` read ``url`` with fsspec-style ``storage_options``.

    Only ``s3://`` URLs get options; see the module docstring for the mapping. The result holds credentials:
    never log it.
    """
    if storage.protocol(url) not in ("s3", "s3a"):
        return {}
    so = dict(storage_options or {})
    client = dict(so.get("client_kwargs") or {})
    options: dict[str, str] = {}
    key = so.get("key") or so.get("aws_access_key_id")
    secret = so.get("secret") or so.get("aws_secret_access_key")
    token = so.get("token") or so.get("aws_session_token")
    if key and secret:
        options["AWS_ACCESS_KEY_ID"] = str(key)
        options["AWS_SECRET_ACCESS_KEY"] = str(secret)
        if token:
            options["AWS_SESSION_TOKEN"] = str(token)
    if so.get("anon"):
        options["AWS_NO_SIGN_REQUEST"] = "YES"
    region = client.get("region_name") or so.get("region_name")
    if region:
        options["AWS_REGION"] = str(region)
    endpoint = so.get("endpoint_url") or client.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(str(endpoint))
        options["AWS_S3_ENDPOINT"] = (parts.netloc + parts.path.rstrip("/")) if parts.netloc else str(endpoint)
        options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return options


def _gdal_s3_available() -> bool:
    """rasterio hands AWS credentials to GDAL only through its ``AWSSession``, which needs boto3; without boto3,
    ``s3://`` goes through an fsspec (s3fs) file object instead."""
    if not USE_GDAL_S3:
        return False
    try:
        import boto3  # noqa: F401
    except ImportError:
        return False
    return True


#: GDAL's raster block cache (MB) while dinoseg reads. GDAL's default is 5 % of the machine's RAM, which a
#: whole-scene decimated read fills with blocks it never needs again: RSS then grows with the scene up to that cap.
#: Overlapping windows re-read at most a strip of blocks, which this holds many times over.
GDAL_CACHE_MB = 128

#: Read ``s3://`` with GDAL's ``/vsis3/`` (True, when boto3 is installed) or through s3fs file objects (False).
USE_GDAL_S3 = True


def _gdal_env(url: str, storage_options: dict[str, Any] | None, native: bool = True) -> Any:
    """A ``rasterio.Env`` for ``url``: for ``s3://`` read by GDAL (``native``), credentials through rasterio's
    ``AWSSession`` (rasterio refuses ``AWS_ACCESS_KEY_ID`` as a plain config option) and the endpoint options as
    GDAL config."""
    options = gdal_env_options(_env_url(url), storage_options) if native else {}
    common = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_CACHEMAX": GDAL_CACHE_MB * 2**20}  # bytes
    if not options:
        return rasterio.Env(**common)
    from rasterio.session import AWSSession

    session = AWSSession(
        aws_access_key_id=options.pop("AWS_ACCESS_KEY_ID", None),
        aws_secret_access_key=options.pop("AWS_SECRET_ACCESS_KEY", None),
        aws_session_token=options.pop("AWS_SESSION_TOKEN", None),
        region_name=options.pop("AWS_REGION", None),
        endpoint_url=options.get("AWS_S3_ENDPOINT"),
        aws_unsigned=bool(options.pop("AWS_NO_SIGN_REQUEST", None)),
    )
    return rasterio.Env(session=session, **common, **options)


def _env_url(url: str) -> str:
    """The URL whose GDAL options a read of ``url`` needs: a local ``.vrt`` (a stack of a STAC item's per-band
    assets, :mod:`dinoseg_core.io.stac`) reads its sources through ``/vsis3/`` with the run's S3 options."""
    if storage.protocol(url) == "file" and url.lower().endswith(".vrt") and _gdal_s3_available():
        return "s3://"
    return url


def _gdal_path(url: str) -> str:
    """rasterio path for ``url``: local paths as they are, s3/http natively, ``file://`` stripped."""
    proto = storage.protocol(url)
    if proto == "file":
        return url[len("file://"):] if url.startswith("file://") else os.path.abspath(url)
    if proto == "s3a":
        return "s3://" + url.split("://", 1)[1]
    return url


@contextlib.contextmanager
def _open_dataset(url: str, storage_options: dict[str, Any] | None) -> Iterator[Any]:
    """``rasterio.open`` inside the right GDAL environment; open failures become dinoseg errors naming ``url``."""
    shown = storage.display_url(url)
    proto = storage.protocol(url)
    opener = None
    native = ("file", "http", "https", *(("s3", "s3a") if _gdal_s3_available() else ()))
    if proto not in native:
        fs, path = storage.url_to_fs(url, storage_options)
        opener, target = fs, path
    else:
        target = _gdal_path(url)
    with _gdal_env(url, storage_options, native=opener is None):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                dataset = rasterio.open(target, opener=opener) if opener is not None else rasterio.open(target)
        except RasterioIOError as exc:
            raise _open_error(url, storage_options, exc) from exc
        except RasterioError as exc:
            raise ImageDecodeError(f"{shown}: cannot open as a raster ({exc}). Is it a GeoTIFF/COG?") from exc
        try:
            yield dataset
        finally:
            dataset.close()


def _open_error(url: str, storage_options: dict[str, Any] | None, exc: Exception) -> Exception:
    shown = storage.display_url(url)
    text = str(exc)
    answer = storage.gdal_storage_error("open", url, exc)  # the store's answer (403, 5xx, throttling), not the bytes
    if answer is not None:
        return answer
    try:
        present = storage.exists(url, storage_options)
    except Exception as check:  # the store answers the check with a failure that may pass: that is the cause
        if storage.failure_kind(check) == "transient":
            return check
        present = True  # the check itself failed otherwise (credentials): report what GDAL said
    if not present:
        return ObjectNotFoundError(f"Cannot open {shown}: no such object. Check the path (and the bucket).")
    return ImageDecodeError(
        f"{shown}: not a readable GeoTIFF/COG (GDAL: {text}). The file is corrupt, truncated or not a raster; "
        "re-export or re-upload it (`gdalinfo` shows what GDAL makes of it)."
    )


def _default_bands(dataset: Any) -> tuple[int, ...]:
    colour = [i + 1 for i, ci in enumerate(dataset.colorinterp) if ci != ColorInterp.alpha]
    if len(colour) >= 3:
        return tuple(colour[:3])
    return (colour[0] if colour else 1,)


def _check_bands(bands: Any, count: int, shown: str) -> tuple[int, ...]:
    if isinstance(bands, (int, np.integer)) and not isinstance(bands, bool):
        bands = (bands,)
    try:
        chosen = tuple(bands)
    except TypeError:
        raise InputError(f"bands={bands!r} for {shown}: give 1-based band numbers, e.g. (4, 3, 2) or (1,)") from None
    if len(chosen) not in (1, 3):
        raise InputError(
            f"bands={list(chosen)} for {shown}: select 3 bands (R, G, B order, e.g. (4, 3, 2)) or 1 band "
            "(replicated to grey RGB)"
        )
    for band in chosen:
        if isinstance(band, bool) or not isinstance(band, (int, np.integer)):
            raise InputError(f"bands={list(chosen)} for {shown}: band numbers must be integers, got {band!r}")
        if not 1 <= band <= count:
            raise InputError(
                f"band {band} is out of range for {shown}, which has {count} band{'s' if count != 1 else ''} "
                f"(bands are numbered 1..{count}, 1-based as in rasterio/GDAL)"
            )
    return tuple(int(b) for b in chosen)


def open_raster(
    url: str | os.PathLike[str],
    bands: Sequence[int] | int | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    radiometry: str | Radiometry | None = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    require_georeferencing: bool = False,
) -> RasterSource:
    """Open a GeoTIFF/COG (or any raster GDAL reads): header, band selection and the scene's stretch.

    Reads the header and, for a ``scene-percentile`` stretch of non-8-bit data, one decimated sample (see the
    module docstring); never the full-resolution scene.

    Args:
        url: local path or URL (``s3://``, ``https://``, ``memory://``, ...).
        bands: 1-based band numbers, 3 (R, G, B) or 1 (grey); default see the module docstring.
        storage_options: fsspec-style options (``key``, ``secret``, ``endpoint_url``, ...).
        radiometry: a :class:`~dinoseg_core.io.radiometry.Radiometry` or its text (``scene-percentile``, the
            default; ``fixed:0,3000``; ...); a ``collection-percentile`` one must carry its computed ranges
            (:func:`collection_radiometry`).
        sample_size: longer side of the decimated read for the statistics.
        require_georeferencing: raise if the file has no CRS or no geotransform.

    Raises:
        InputError: a band out of range, a bad option or radiometry (``none`` on non-8-bit data, a range count
            that is not the band count), no georeferencing when required.
        ImageDecodeError: the file is corrupt, truncated or not a raster (an ``InputError``).
        ObjectNotFoundError: nothing at ``url``. StorageError: access denied and other storage failures.
    """
    url = os.fspath(url)
    shown = storage.display_url(url)
    spec = Radiometry.parse(radiometry)
    with _open_dataset(url, storage_options) as ds:
        chosen = _default_bands(ds) if bands is None else _check_bands(bands, ds.count, shown)
        dtype = str(ds.dtypes[chosen[0] - 1])
        nodata = ds.nodatavals[chosen[0] - 1]
        source = RasterSource(
            url=url, bands=chosen, stretch=((0.0, 1.0),) * len(chosen), crs=ds.crs, transform=ds.transform,
            width=ds.width, height=ds.height, nodata=None if nodata is None else float(nodata), dtype=dtype,
            count=ds.count, radiometry=str(spec), storage_options=storage_options,
        )
        if require_georeferencing:
            source.require_georeferencing("this job")
        unique = sorted(set(chosen))
        out_hw = _sample_shape(source.height, source.width, int(sample_size))

        def sample() -> list[np.ndarray]:
            values = _decimated_sample(ds, source, unique, out_hw)
            return [values[unique.index(b)] for b in chosen]

        ranges = spec.band_ranges(dtype, len(chosen), sample=sample, name=shown)
    return dataclasses.replace(source, stretch=tuple(ranges))


def _sample_shape(height: int, width: int, longer: int) -> tuple[int, int]:
    scale = min(1.0, longer / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _decimated_sample(ds: Any, source: RasterSource, bands: list[int], out_hw: tuple[int, int]) -> list[np.ndarray]:
    """Each band's valid values in one decimated (nearest: an unbiased subset of pixels) read of ``out_hw`` px."""
    try:
        data = ds.read(bands, out_shape=(len(bands), *out_hw), resampling=Resampling.nearest, masked=False)
        masks = ds.read_masks(bands, out_shape=(len(bands), *out_hw), resampling=Resampling.nearest)
    except RasterioError as exc:
        raise _read_error(source, "the stretch sample", exc) from exc
    return [data[i][(masks[i] > 0) & np.isfinite(data[i])].astype(np.float64) for i in range(len(bands))]


def _grid_sample(ds: Any, source: RasterSource, bands: list[int], out_hw: tuple[int, int]) -> list[np.ndarray]:
    """Each band's valid values in a grid of :data:`COLLECTION_GRID` squared small full-resolution windows, evenly
    spread, holding about ``out_hw`` px in all: a bounded read of a file without overviews (a decimated read
    would decode every block)."""
    grid = COLLECTION_GRID
    wh, ww = max(1, out_hw[0] // grid), max(1, out_hw[1] // grid)
    rows = np.linspace(0, source.height - wh, grid).round().astype(int)
    cols = np.linspace(0, source.width - ww, grid).round().astype(int)
    parts: list[list[np.ndarray]] = [[] for _ in bands]
    for row in dict.fromkeys(rows.tolist()):
        for col in dict.fromkeys(cols.tolist()):
            win = Window(col, row, ww, wh)
            try:
                data = ds.read(bands, window=win, masked=False)
                masks = ds.read_masks(bands, window=win)
            except RasterioError as exc:
                raise _read_error(source, "the collection stretch sample", exc) from exc
            for i in range(len(bands)):
                parts[i].append(data[i][(masks[i] > 0) & np.isfinite(data[i])].astype(np.float64))
    return [np.concatenate(p) for p in parts]


def _collection_sample(url: str, bands: Sequence[int] | int | None, storage_options: dict[str, Any] | None,
                       longer: int) -> tuple[RasterSource, list[np.ndarray] | None]:
    """One scene's part of a collection stretch: its header and each selected band's sampled values (None for
    8-bit data, which is used as is)."""
    with _open_dataset(url, storage_options) as ds:
        chosen = _default_bands(ds) if bands is None else _check_bands(bands, ds.count, storage.display_url(url))
        dtype = str(ds.dtypes[chosen[0] - 1])
        nodata = ds.nodatavals[chosen[0] - 1]
        source = RasterSource(url=url, bands=chosen, stretch=(), crs=ds.crs, transform=ds.transform, width=ds.width,
                              height=ds.height, nodata=None if nodata is None else float(nodata), dtype=dtype,
                              count=ds.count, storage_options=storage_options)
        if dtype == EIGHT_BIT:
            return source, None
        unique = sorted(set(chosen))
        out_hw = _sample_shape(source.height, source.width, longer)
        small = source.height * source.width <= 16 * out_hw[0] * out_hw[1]
        sample = _decimated_sample if small or ds.overviews(unique[0]) else _grid_sample
        values = sample(ds, source, unique, out_hw)
    return source, [values[unique.index(b)] for b in chosen]


def collection_radiometry(
    urls: Sequence[str | os.PathLike[str]],
    bands: Sequence[int] | int | None = None,
    radiometry: str | Radiometry = "collection-percentile",
    storage_options: dict[str, Any] | None = None,
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    threads: int = 8,
) -> Radiometry:
    """The collection stretch of ``urls`` (the scenes of a collection): ``radiometry``'s percentiles of each
    selected band over a bounded sample pooled from every scene, as a ``collection-percentile``
    :class:`Radiometry` carrying its ranges.

    Each scene contributes a sample whose longer side is ``sample_size / sqrt(len(urls))`` px (at least
    :data:`MIN_COLLECTION_SAMPLE`), so the pooled sample stays about ``sample_size`` squared px per band whatever
    the collection's size: from the file's overviews when it has them (a COG), else from a grid of small
    full-resolution windows. The result depends on the set of scenes, not on their order. 8-bit scenes are used as
    is and add nothing; an all-8-bit collection gives empty ranges.

    Raises:
        InputError: ``radiometry`` is not a collection stretch, no scenes, a band out of range in a scene (named).
    """
    spec = Radiometry.parse(radiometry)
    if spec.kind != "collection-percentile":
        raise InputError(f"collection_radiometry: radiometry {spec} is not a collection stretch (collection-percentile)")
    names = sorted(dict.fromkeys(os.fspath(u) for u in urls))
    if not names:
        raise InputError("collection_radiometry: no scenes to compute the collection stretch from")
    longer = max(MIN_COLLECTION_SAMPLE, round(int(sample_size) / math.sqrt(len(names))))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, min(int(threads), len(names)))) as pool:
        results = list(pool.map(lambda u: _collection_sample(u, bands, storage_options, longer), names))
    samples = [(source, values) for source, values in results if values is not None]
    if not samples:
        return spec.with_ranges(())
    counts = {len(source.bands) for source, _ in samples}
    if len(counts) != 1:
        raise InputError(f"collection_radiometry: the scenes select different numbers of bands ({sorted(counts)}); "
                         "give --bands")
    pooled = [[values[i] for _, values in samples] for i in range(counts.pop())]
    return spec.with_ranges(percentile_ranges(pooled, spec.percentiles))


# ------------------------------------------------------------------------------------------------- reading


def _as_window(window: Any, source: RasterSource) -> Window:
    if window is None:
        return Window(0, 0, source.width, source.height)
    if not isinstance(window, Window):
        raise InputError(
            f"window={window!r}: pass a rasterio.windows.Window(col_off, row_off, width, height) "
            "(dinoseg_core.geo.Window)"
        )
    col, row, width, height = (window.col_off, window.row_off, window.width, window.height)
    if any(v != int(v) for v in (col, row, width, height)):
        raise InputError(f"window {window!r}: offsets and sizes must be whole pixels")
    col, row, width, height = int(col), int(row), int(width), int(height)
    if width <= 0 or height <= 0 or col < 0 or row < 0 or col + width > source.width or row + height > source.height:
        raise InputError(
            f"window (col {col}, row {row}, {width}x{height}) is not inside {source.display_url} "
            f"({source.width}x{source.height} px)"
        )
    return Window(col, row, width, height)


def _read_error(source: RasterSource, what: str, exc: Exception) -> Exception:
    answer = storage.gdal_storage_error(f"read {what} of", source.url, exc)
    if answer is not None:  # the store's answer (403, 5xx, throttling), not the bytes
        return answer
    cause = exc.__cause__ or exc.__context__
    detail = f"{exc}" + (f" ({cause})" if cause is not None and str(cause) not in str(exc) else "")
    return ImageDecodeError(
        f"{source.display_url}: cannot read {what}: {detail}. The file is corrupt or truncated (a partial "
        "upload?); re-export or re-upload it."
    )


class RasterReader:
    """An open scene for many window reads (one GDAL handle; not shared between threads). Use
    :func:`raster_reader`."""

    def __init__(self, source: RasterSource, dataset: Any):
        self.source = source
        self._ds = dataset
        # rasterio reads each distinct band once; a replicated grey band is read once and repeated
        self._unique = sorted(set(source.bands))
        self._pick = [self._unique.index(b) for b in source.bands] if len(source.bands) == 3 else [0, 0, 0]
        self._ranges = [source.stretch[source.bands.index(b)] for b in self._unique]

    def read(self, window: Window | None = None, out_shape: tuple[int, int] | None = None,
             resampling: str = "average") -> tuple[np.ndarray, np.ndarray]:
        """One window, optionally resampled to ``out_shape`` ``(h, w)`` (``average`` by default: an anti-aliased
        thumbnail; GDAL uses overviews when the file has them).

        Returns:
            image ``float32 (h, w, 3)`` in ``[0, 1]`` (invalid pixels 0), valid ``bool (h, w)``.
        """
        win = _as_window(window, self.source)
        shape = (int(win.height), int(win.width)) if out_shape is None else tuple(int(v) for v in out_shape)
        method = getattr(Resampling, resampling)
        try:
            data = self._ds.read(self._unique, window=win, out_shape=(len(self._unique), *shape), resampling=method,
                                 out_dtype=np.float32)
            masks = self._ds.read_masks(self._unique, window=win, out_shape=(len(self._unique), *shape),
                                        resampling=Resampling.nearest)
        except RasterioError as exc:
            where = f"window (col {int(win.col_off)}, row {int(win.row_off)}, {int(win.width)}x{int(win.height)})"
            raise _read_error(self.source, where, exc) from exc
        valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(data), axis=0)
        Radiometry.apply(data, self._ranges, out=data)
        data[:, ~valid] = 0.0
        image = np.ascontiguousarray(np.moveaxis(data[self._pick], 0, -1))
        return image, valid


@contextlib.contextmanager
def raster_reader(source: RasterSource) -> Iterator[RasterReader]:
    """Open ``source`` once for many :meth:`RasterReader.read` calls."""
    with _open_dataset(source.url, source.storage_options) as ds:
        if (ds.width, ds.height, ds.count) != (source.width, source.height, source.count):
            raise InputError(
                f"{source.display_url} changed since it was opened ({source.width}x{source.height}, {source.count} "
                f"bands then; {ds.width}x{ds.height}, {ds.count} bands now): open it again"
            )
        yield RasterReader(source, ds)


def read_window(source: RasterSource, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one pixel window of ``source`` at full resolution (the whole scene for ``window=None``: only for
    small rasters).

    Args:
        window: ``Window(col_off, row_off, width, height)`` inside the scene.
    Returns:
        image ``float32 (h, w, 3)`` in ``[0, 1]`` (the scene's stretch; invalid pixels 0), valid ``bool (h, w)``.
    """
    with raster_reader(source) as reader:
        return reader.read(window)


def read_overview(source: RasterSource, longer_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole scene downscaled (average resampling) so that its longer side is ``longer_side`` px (never
    upscaled); read from the file's overviews when it has them. Returns image ``float32 (h, w, 3)`` and valid
    ``bool (h, w)`` as :func:`read_window`."""
    shape = _sample_shape(source.height, source.width, int(longer_side))
    with raster_reader(source) as reader:
        return reader.read(None, out_shape=shape)


def read_reference(
    image_url: str | os.PathLike[str],
    mask_url: str | os.PathLike[str],
    window: Window | None = None,
    bands: Sequence[int] | int | None = None,
    storage_options: dict[str, Any] | None = None,
    **open_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """A reference shot from rasters: a window of a GeoTIFF and the same window of its mask raster.

    The mask raster (any format GDAL reads: GeoTIFF, PNG, ...) must have the image's size; its first band > 0 is
    the concept. Invalid (nodata) pixels of the image are removed from the mask. ``open_kwargs`` go to
    :func:`open_raster` (``radiometry``, ...): give the targets' radiometry, so that a reference is scaled as
    the scenes it is compared with; with ``scene-percentile`` the stretch is the whole reference scene's.

    Returns:
        image ``float32 (h, w, 3)`` in ``[0, 1]``, mask ``bool (h, w)``.
    Raises:
        InputError: sizes differ, the window is outside the scene, or the mask is empty inside the window.
    """
    source = open_raster(image_url, bands, storage_options, **open_kwargs)
    image, valid = read_window(source, window)
    mask_url = os.fspath(mask_url)
    with _open_dataset(mask_url, storage_options) as mds:
        if (mds.height, mds.width) != source.shape:
            raise InputError(
                f"reference mask {storage.display_url(mask_url)} is {mds.width}x{mds.height} px but its image "
                f"{source.display_url} is {source.width}x{source.height} px; a mask must cover its image pixel "
                "for pixel"
            )
        win = _as_window(window, source)
        try:
            mask = mds.read(1, window=win) > 0
        except RasterioError as exc:
            raise (storage.gdal_storage_error("read the mask", mask_url, exc)
                   or ImageDecodeError(f"{storage.display_url(mask_url)}: cannot read the mask: {exc}")) from exc
    mask &= valid
    if not mask.any():
        raise InputError(
            f"reference mask {storage.display_url(mask_url)} is empty inside the window of {source.display_url}: "
            "choose a window that shows the concept"
        )
    return image, mask


def window_bounds_to_pixels(source: RasterSource, left: float, bottom: float, right: float, top: float) -> Window:
    """The pixel window (rounded outwards, clipped to the scene) covering CRS bounds; for references given as a
    bounding box in map coordinates."""
    source.require_georeferencing("a window given in map coordinates")
    from rasterio.windows import from_bounds

    win = from_bounds(left, bottom, right, top, transform=source.transform)
    col0, row0 = max(0, math.floor(win.col_off)), max(0, math.floor(win.row_off))
    col1 = min(source.width, math.ceil(win.col_off + win.width))
    row1 = min(source.height, math.ceil(win.row_off + win.height))
    if col1 <= col0 or row1 <= row0:
        raise InputError(f"bounds ({left}, {bottom}, {right}, {top}) do not overlap {source.display_url}")
    return Window(col0, row0, col1 - col0, row1 - row0)
