"""Georeferencing of mask arrays: CF / GeoZarr attributes so that xarray + rioxarray (and GDAL) place them.

Two conventions are written side by side, because readers differ:

- **CF ``grid_mapping``** (what rioxarray, GDAL's Zarr driver and the netCDF world read): a scalar ``spatial_ref``
  array whose attributes hold ``crs_wkt`` and ``spatial_ref`` (the WKT), ``GeoTransform`` (GDAL order:
  ``"x0 dx rx y0 ry dy"``) and the CF grid-mapping parameters; the mask array names it in ``grid_mapping`` and lists
  it in ``coordinates``; 1-D ``x`` and ``y`` arrays hold the pixel-centre coordinates (north-up grids only; a
  rotated grid relies on ``GeoTransform``).
- **GeoZarr ``proj:`` / ``spatial:``** attributes on the mask array (the conventions GeoZarr is moving to):
  ``proj:code`` (``"EPSG:32633"``, when the CRS has one), ``proj:wkt2``, ``spatial:dimensions`` (``["y", "x"]``),
  ``spatial:transform`` (the affine ``[a, b, c, d, e, f]``, rasterio order), ``spatial:shape``, ``spatial:bbox``
  and ``spatial:registration`` (``"pixel"``: the transform maps pixel corners).

:func:`geo_attrs` gives the flat, JSON-able attributes for a mask array (or an archive record);
:func:`write_georeference` adds ``spatial_ref``, ``x`` and ``y`` next to a mask array in a zarr group and sets the
mask's attributes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dinoseg_core.errors import InputError

__all__ = ["GRID_MAPPING", "coordinates", "geo_attrs", "georeference_from_attrs", "spatial_ref_attrs",
           "write_georeference"]

#: Name of the CF grid-mapping variable.
GRID_MAPPING = "spatial_ref"


def _transform_list(source: Any) -> list[float]:
    return [float(v) for v in list(source.transform)[:6]]


def _epsg_code(crs: Any) -> str | None:
    try:
        epsg = crs.to_epsg()
    except Exception:
        return None
    return f"EPSG:{epsg}" if epsg else None


def _wkt2(crs: Any) -> str:
    try:
        return crs.to_wkt(version="WKT2_2019")
    except Exception:  # pragma: no cover - older GDAL
        return crs.to_wkt()


def geo_attrs(source: Any) -> dict[str, Any]:
    """GeoZarr-style and CF attributes for a mask of ``source``'s grid (:class:`~dinoseg_core.geo.RasterSource`,
    or anything with ``crs``, ``transform``, ``width``, ``height``).

    Returns a JSON-able dict: ``grid_mapping``, ``proj:code`` (if the CRS has an EPSG code), ``proj:wkt2``,
    ``spatial:dimensions``, ``spatial:transform``, ``spatial:shape``, ``spatial:bbox``, ``spatial:registration``.

    Raises:
        InputError: the source has no CRS or no geotransform.
    """
    _require(source)
    a, b, c, d, e, f = _transform_list(source)
    h, w = int(source.height), int(source.width)
    xs = [c, c + a * w, c + b * h, c + a * w + b * h]
    ys = [f, f + d * w, f + e * h, f + d * w + e * h]
    attrs: dict[str, Any] = {"grid_mapping": GRID_MAPPING}
    code = _epsg_code(source.crs)
    if code:
        attrs["proj:code"] = code
    attrs.update({
        "proj:wkt2": _wkt2(source.crs),
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": [a, b, c, d, e, f],
        "spatial:shape": [h, w],
        "spatial:bbox": [min(xs), min(ys), max(xs), max(ys)],
        "spatial:registration": "pixel",
    })
    return attrs


def spatial_ref_attrs(source: Any) -> dict[str, Any]:
    """Attributes of the CF ``spatial_ref`` variable: ``crs_wkt``, ``spatial_ref``, ``GeoTransform`` and, when
    pyproj is installed, the CF grid-mapping parameters (``grid_mapping_name``, ...)."""
    _require(source)
    a, b, c, d, e, f = _transform_list(source)
    wkt = source.crs.to_wkt()
    attrs: dict[str, Any] = {}
    try:
        import pyproj

        attrs.update({k: _plain(v) for k, v in pyproj.CRS.from_wkt(wkt).to_cf().items()})
    except Exception:  # pyproj missing or a CRS without a CF mapping: the WKT is enough for rioxarray and GDAL
        pass
    attrs.update({"crs_wkt": wkt, "spatial_ref": wkt, "GeoTransform": " ".join(repr(v) for v in (c, a, b, f, d, e))})
    return attrs


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def coordinates(source: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """1-D pixel-centre coordinates ``(x (W,), y (H,))`` float64, or None for a rotated grid."""
    _require(source)
    a, b, c, d, e, f = _transform_list(source)
    if b != 0.0 or d != 0.0:
        return None
    x = c + (np.arange(int(source.width), dtype=np.float64) + 0.5) * a
    y = f + (np.arange(int(source.height), dtype=np.float64) + 0.5) * e
    return x, y


def write_georeference(group: Any, source: Any, mask_name: str = "mask") -> None:
    """Make ``group[mask_name]`` (a 2-D ``(y, x)`` zarr array of ``source``'s size) georeferenced: create the
    scalar ``spatial_ref`` array and the ``x``/``y`` coordinate arrays in ``group`` and set the mask's
    ``grid_mapping``, ``coordinates`` and :func:`geo_attrs` attributes.

    Args:
        group: an open, writable ``zarr.Group``.
    """
    import zarr  # noqa: F401  - the group is a zarr group; imported for a clear error if zarr is missing

    mask = group[mask_name]
    if tuple(mask.shape) != (int(source.height), int(source.width)):
        raise InputError(
            f"mask array {mask_name!r} has shape {tuple(mask.shape)} but the raster is "
            f"{source.height}x{source.width}; georeference a mask of the raster's size"
        )
    ref = group.create_array(GRID_MAPPING, shape=(), dtype="int64", fill_value=0, attributes=spatial_ref_attrs(source),
                             overwrite=True)
    ref[()] = 0
    coords = coordinates(source)
    if coords is not None:
        x, y = coords
        for name, values in (("x", x), ("y", y)):
            arr = group.create_array(name, shape=values.shape, dtype="float64", chunks=values.shape,
                                     dimension_names=(name,), fill_value=np.nan, overwrite=True,
                                     attributes={"standard_name": f"projection_{name}_coordinate",
                                                 "axis": name.upper(),
                                                 "long_name": f"{name} coordinate of pixel centre",
                                                 **_units(source)})
            arr[:] = values
    mask.attrs.update({**geo_attrs(source), "coordinates": GRID_MAPPING})


def georeference_from_attrs(attrs: Any) -> tuple[Any, Any]:
    """``(transform, crs)`` (rasterio ``Affine`` and ``CRS``) back from :func:`geo_attrs` attributes (of a mask array
    or an archive record), e.g. to vectorise an archived mask without the source raster.

    Raises:
        InputError: the attributes carry no georeferencing.
    """
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    transform = attrs.get("spatial:transform")
    wkt = attrs.get("proj:wkt2")
    code = attrs.get("proj:code")
    if transform is None or (wkt is None and code is None):
        raise InputError(
            "the mask has no georeferencing attributes (spatial:transform, proj:wkt2 / proj:code): it was not "
            "made from a georeferenced raster"
        )
    crs = CRS.from_wkt(wkt) if wkt else CRS.from_user_input(code)
    return Affine(*[float(v) for v in transform[:6]]), crs


def _units(source: Any) -> dict[str, str]:
    try:
        unit = source.crs.linear_units
    except Exception:
        return {}
    return {"units": "m" if unit in ("metre", "meter") else unit} if unit and unit != "unknown" else {}


def _require(source: Any) -> None:
    check = getattr(source, "require_georeferencing", None)
    if check is not None:
        check("writing georeferenced masks")
    elif source.crs is None:
        raise InputError("the raster has no CRS; georeferenced outputs need one")
