"""Masks to polygons, and polygons to GeoJSON / GeoPackage / GeoParquet files at any storage URL.

:func:`masks_to_polygons` vectorises an in-memory mask (``rasterio.features.shapes``, 4-connected by default,
holes kept) in the source CRS, optionally reprojected (``rasterio.warp.transform_geom``; ``to_crs="EPSG:4326"``
for longitude/latitude). :func:`array_to_polygons` does the same for a mask too large for memory (a chunked zarr
array): it vectorises blocks and dissolves only the polygons that touch an inner block border, so an object
spanning blocks comes out as one polygon. :func:`polygons_of_masks` vectorises many archived masks from their
georeferencing attributes, skipping (and naming) those that have none.

:func:`export_vectors` writes ``(geometry, properties)`` records:

- ``geojson``: no extra dependency beyond shapely. Coordinates are in the records' CRS; a CRS other than
  EPSG:4326 is named in a ``crs`` member (the pre-RFC 7946 convention GDAL/QGIS read); for strict RFC 7946 output
  reproject to EPSG:4326 first;
- ``gpkg`` (GeoPackage) and ``parquet`` (GeoParquet): need ``geopandas`` with ``pyogrio`` (GeoPackage) or
  ``pyarrow`` (Parquet); without them :class:`~dinoseg_core.errors.MissingDependencyError` names the pip line.

Properties: whatever the caller passes (the pipeline passes ``source_uri`` and ``concept``), plus ``area`` (in
CRS units squared, before any reprojection) and ``pixels``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from dinoseg_core.errors import InputError, MissingDependencyError
from dinoseg_core.io import storage

__all__ = ["FORMATS", "array_to_polygons", "export_vectors", "masks_to_polygons", "polygons_of_masks"]

#: Output formats and their file extensions.
FORMATS = {"geojson": (".geojson", ".json"), "gpkg": (".gpkg",), "parquet": (".parquet", ".geoparquet")}

Record = tuple[Any, dict[str, Any]]


def _shapely():
    try:
        import shapely.geometry

        return shapely.geometry
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError("shapely", "Vector export of masks", "shapely>=2") from exc


def _crs(value: Any) -> Any:
    from rasterio.crs import CRS

    if value is None or isinstance(value, CRS):
        return value
    try:
        return CRS.from_user_input(value)
    except Exception as exc:
        raise InputError(f"crs={value!r} is not a CRS rasterio understands (try 'EPSG:4326' or a WKT string)") from exc


def _polygons_of_block(mask: np.ndarray, transform: Any, connectivity: int) -> list[dict[str, Any]]:
    from rasterio import features

    mask = np.ascontiguousarray(mask, dtype=bool)
    if not mask.any():
        return []
    return [geom for geom, _ in features.shapes(mask.astype(np.uint8), mask=mask, connectivity=connectivity,
                                                 transform=transform)]


def _finish(geoms: Iterable[Any], transform: Any, crs: Any, to_crs: Any,
            properties: Mapping[str, Any] | None) -> list[Record]:
    geometry = _shapely()
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d) or 1.0
    target = _crs(to_crs)
    source = _crs(crs)
    if target is not None and source is None:
        raise InputError("cannot reproject polygons of a mask without a CRS: pass crs= (the raster's CRS)")
    records: list[Record] = []
    for geom in geoms:
        shape = geom if hasattr(geom, "geom_type") else geometry.shape(geom)
        props = {**(properties or {}), "area": float(shape.area), "pixels": round(shape.area / pixel_area)}
        if target is not None and target != source:
            from rasterio.warp import transform_geom

            shape = geometry.shape(transform_geom(source, target, geometry.mapping(shape)))
        records.append((shape, props))
    return records


def masks_to_polygons(
    mask: np.ndarray,
    transform: Any,
    crs: Any = None,
    to_crs: Any = None,
    properties: Mapping[str, Any] | None = None,
    connectivity: int = 4,
) -> list[Record]:
    """Polygons (one per connected region, holes kept) of a ``bool (H, W)`` mask.

    Args:
        transform: the affine pixel -> CRS transform of the mask's grid (``RasterSource.transform``; the identity
            gives pixel coordinates).
        crs: the mask's CRS (``RasterSource.crs`` or any rasterio CRS input); needed only to reproject.
        to_crs: reproject to this CRS (``"EPSG:4326"``); default: stay in ``crs``.
        properties: attributes copied onto every polygon (``source_uri``, ``concept``, ...).
        connectivity: 4 or 8.
    Returns:
        ``[(shapely geometry, properties dict), ...]``; properties get ``area`` (CRS units squared, before
        reprojection) and ``pixels``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise InputError(f"connectivity={connectivity}: must be 4 or 8")
    return _finish(_polygons_of_block(mask > 0, transform, connectivity), transform, crs, to_crs, properties)


def array_to_polygons(
    array: Any,
    transform: Any,
    crs: Any = None,
    to_crs: Any = None,
    properties: Mapping[str, Any] | None = None,
    block_size: int = 4096,
    connectivity: int = 4,
) -> list[Record]:
    """:func:`masks_to_polygons` for a 2-D array too large for memory (a zarr array, 0/255 or bool), read in
    ``block_size`` blocks (rounded to whole chunks). Polygons touching an inner block border are dissolved with
    their neighbours across it, so an object spanning blocks is one polygon; memory is one block plus the
    polygons along block borders."""
    from rasterio.transform import Affine
    from shapely import affinity
    from shapely.ops import unary_union

    geometry = _shapely()
    height, width = (int(v) for v in array.shape)
    chunk = getattr(array, "chunks", None)
    if chunk:
        block_size = max(int(chunk[0]), (block_size // int(chunk[0])) * int(chunk[0]))
    inner: list[Any] = []
    border: list[Any] = []
    for r0 in range(0, height, block_size):
        for c0 in range(0, width, block_size):
            r1, c1 = min(r0 + block_size, height), min(c0 + block_size, width)
            block = np.asarray(array[r0:r1, c0:c1]) > 0
            for geom in _polygons_of_block(block, Affine.translation(c0, r0), connectivity):
                shape = geometry.shape(geom)  # in scene pixel coordinates
                minx, miny, maxx, maxy = shape.bounds
                touches = ((c0 > 0 and minx <= c0) or (c1 < width and maxx >= c1)
                           or (r0 > 0 and miny <= r0) or (r1 < height and maxy >= r1))
                (border if touches else inner).append(shape)
    if border:
        merged = unary_union(border)
        inner.extend(p for p in getattr(merged, "geoms", [merged]) if not p.is_empty)
    t = transform
    in_crs = [affinity.affine_transform(g, [t.a, t.b, t.d, t.e, t.c, t.f]) for g in inner]
    return _finish(in_crs, transform, crs, to_crs, properties)


def polygons_of_masks(
    masks: Iterable[tuple[str, Mapping[str, Any], Any, Mapping[str, Any]]],
    to_crs: Any = None,
    connectivity: int = 4,
) -> tuple[list[Record], Any, list[tuple[str, str]]]:
    """Polygons of many masks, each georeferenced by its own attributes (an archive record's ``geo_attrs``).

    Args:
        masks: ``(name, attributes, array, properties)`` per mask, read lazily (a mask's pixels are read only
            once its georeferencing is known): ``name`` says which mask in messages (its source URI).
        to_crs: reproject every polygon to this CRS; needed when the masks' CRSs differ.
    Returns:
        ``(records, crs, skipped)``: the polygons, the CRS they are in (``to_crs``, or the masks' common CRS; None
        when every mask was skipped) and ``[(name, reason)]`` of the masks without georeferencing (a PNG tile, a
        scene without a CRS), which are skipped rather than failing the others.
    Raises:
        InputError: the masks are in different CRSs and ``to_crs`` is not given (naming two of them).
    """
    from dinoseg_core.geo.georef import georeference_from_attrs

    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    first: tuple[str, Any] | None = None
    for name, attributes, array, properties in masks:
        try:
            transform, crs = georeference_from_attrs(attributes)
        except InputError as exc:
            skipped.append((name, str(exc)))
            continue
        if first is None:
            first = (name, crs)
        elif to_crs is None and crs != first[1]:
            raise InputError(
                f"{name} is in {crs.to_string()} but {first[0]} is in {first[1].to_string()}: one file holds one "
                "CRS; reproject with to_crs (the CLI's --to-crs EPSG:4326)"
            )
        records += array_to_polygons(array, transform, crs, to_crs=to_crs, properties=properties,
                                     connectivity=connectivity)
    return records, (_crs(to_crs) if to_crs is not None else first[1] if first else None), skipped


def _format_of(url: str, format: str | None) -> str:
    if format:
        fmt = format.lower().lstrip(".")
        fmt = {"json": "geojson", "geopackage": "gpkg", "geoparquet": "parquet"}.get(fmt, fmt)
        if fmt not in FORMATS:
            raise InputError(f"format={format!r}: choose one of {sorted(FORMATS)}")
        return fmt
    lower = url.lower()
    for fmt, exts in FORMATS.items():
        if lower.endswith(exts):
            return fmt
    raise InputError(
        f"cannot tell the vector format of {storage.display_url(url)} from its extension; pass format= one of "
        f"{sorted(FORMATS)} or use .geojson / .gpkg / .parquet"
    )


def _geojson_bytes(records: Sequence[Record], crs: Any) -> bytes:
    geometry = _shapely()
    doc: dict[str, Any] = {"type": "FeatureCollection"}
    if crs is not None:
        epsg = crs.to_epsg()
        if epsg != 4326:
            name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
            doc["crs"] = {"type": "name", "properties": {"name": name}}
    doc["features"] = [
        {"type": "Feature", "properties": _jsonable(props), "geometry": geometry.mapping(geom)}
        for geom, props in records
    ]
    return json.dumps(doc, separators=(",", ":")).encode()


def _jsonable(props: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in props.items()}


def _geodataframe(records: Sequence[Record], crs: Any, feature: str, extra: str):
    try:
        import geopandas
    except ImportError as exc:
        raise MissingDependencyError("geopandas", feature, f"geopandas {extra}") from exc
    rows = [_jsonable(props) for _, props in records]
    return geopandas.GeoDataFrame(rows, geometry=[geom for geom, _ in records],
                                  crs=crs.to_wkt() if crs is not None else None)


def export_vectors(
    records: Sequence[Record],
    url: str | os.PathLike[str],
    format: str | None = None,
    storage_options: dict[str, Any] | None = None,
    crs: Any = None,
    layer: str = "masks",
) -> str:
    """Write polygon records to ``url`` (any storage URL) as GeoJSON, GeoPackage or GeoParquet.

    Args:
        records: ``[(shapely geometry, properties), ...]`` from :func:`masks_to_polygons`, all in ``crs``.
        format: ``"geojson"``, ``"gpkg"`` or ``"parquet"``; default from the URL's extension.
        crs: the records' CRS (``"EPSG:4326"`` after reprojection, else the raster's CRS).
        layer: the GeoPackage layer name.
    Returns:
        the format written.
    """
    url = os.fspath(url)
    fmt = _format_of(url, format)
    crs = _crs(crs)
    records = list(records)
    if fmt == "geojson":
        storage.write_bytes(url, _geojson_bytes(records, crs), storage_options)
        return fmt
    if fmt == "parquet":
        frame = _geodataframe(records, crs, "GeoParquet export", "pyarrow")
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("pyarrow", "GeoParquet export", "geopandas pyarrow") from exc
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        storage.write_bytes(url, buffer.getvalue(), storage_options)
        return fmt
    frame = _geodataframe(records, crs, "GeoPackage export", "pyogrio")
    try:
        import pyogrio  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("pyogrio", "GeoPackage export", "geopandas pyogrio") from exc
    with tempfile.TemporaryDirectory() as tmp:  # GeoPackage is SQLite: written to a local file, then uploaded
        path = os.path.join(tmp, "out.gpkg")
        frame.to_file(path, driver="GPKG", layer=layer, engine="pyogrio")
        with open(path, "rb") as fh:
            storage.write_bytes(url, fh.read(), storage_options)
    return fmt
