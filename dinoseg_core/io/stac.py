"""STAC in and out: the images of a STAC catalog as a collection to label, and labelled masks as STAC label Items.

**In.** A STAC ItemCollection, Catalog, Collection or single Item (a JSON file, local or at any fsspec URL; child
catalogs and items are followed through fsspec too) gives one image per Item: the href of one of its assets,
chosen by :func:`read_stac_images`'s ``asset``:

- ``None``: the ``visual`` asset, else the Item's only image asset (a GeoTIFF/COG, PNG, JPEG or WebP);
- an asset key (``visual``, ``image``, ``analytic``): that asset;
- band names (``red,green,blue`` or ``nir``): the one asset whose ``eo:bands`` (STAC 1.0) or ``bands`` (STAC 1.1)
  hold every name (matched against ``name`` and ``common_name``, case-insensitively), read as those bands in that
  order (1-based band numbers, as ``--bands``).

Items whose bands live in one asset *per band* (Sentinel-2 style ``red``, ``green``, ``blue`` or ``B04``,
``B03``, ``B02`` single-band COGs) are stacked: with 1 or 3 names, each an asset key or the name/common name of
an asset's only band, the Item's image is a GDAL VRT (one ``VRTRasterBand`` per name, in that order, each a
``SimpleSource`` reading the asset through GDAL: local paths as they are, ``s3://`` as ``/vsis3/``, ``http(s)``
as ``/vsicurl/``, ``gs://`` as ``/vsigs/``) written to :func:`vrt_folder` as ``[<collection>/]<item id>.vrt``.
Every band must have the same size, CRS and transform (an :class:`InputError` names the Item and the asset that
differs; different resolutions are never resampled). The VRT records every asset's stamp (ETag or mtime), so a
changed band changes the VRT's bytes, hence its sha256, and the Item is relabelled; it is rewritten only when its
content changes. The asset hrefs (not the VRT) are what :attr:`StacImage.sources` lists for the origin check.

**Out.** :func:`label_item` builds a STAC Item with the label extension (v1.0.1) for one archived mask: raster
labels, ``label:tasks = ["segmentation"]``, ``label:methods = ["automated"]``, the class values of the mask (0
background, 255 the concept), assets for the mask (a COG, or the archive record when the mask has no
georeferencing) and, if given, its polygons; :func:`write_catalog` writes Items into a static, self-contained
catalog through fsspec.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dinoseg_core.errors import DinosegError, InputError
from dinoseg_core.io import storage

__all__ = [
    "LABEL_EXTENSION",
    "VRT_DIR",
    "gdal_vsi_path",
    "vrt_folder",
    "StacImage",
    "is_stac",
    "read_stac_items",
    "read_stac_images",
    "label_item",
    "write_catalog",
    "footprint",
    "write_label_catalog",
]

#: The label extension's schema URI, as written in ``stac_extensions``.
LABEL_EXTENSION = "https://stac-extensions.github.io/label/v1.0.1/schema.json"
#: Media types of assets dinoseg can read as images.
IMAGE_MEDIA = ("image/tiff", "image/png", "image/jpeg", "image/webp", "image/jp2")
#: Asset roles that are never the image to label.
NOT_IMAGE_ROLES = {"thumbnail", "overview", "metadata", "labels", "labels-raster", "labels-vector"}
_IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".webp", ".jp2")
_STAC_TYPES = {"Feature", "FeatureCollection", "Catalog", "Collection"}


@dataclass(frozen=True)
class StacImage:
    """One Item's image: the Item's id, the absolute URL of the chosen asset, its 1-based bands when they were
    chosen by name (None: the reader's default), and whether the asset is a raster read through GDAL (a
    GeoTIFF/COG/JPEG 2000 by its media type, whatever its href looks like)."""

    item_id: str
    url: str
    bands: tuple[int, ...] | None = None
    raster: bool = False
    #: the asset URLs read (the stacked assets of a per-band VRT; empty: ``url`` itself)
    sources: tuple[str, ...] = ()


#: Local folder of the VRTs that stack per-band assets; None: ``~/.cache/dinoseg/stac-vrt``.
VRT_DIR: str | None = None


def is_stac(images: Any) -> bool:
    """True for one URL ending in ``.json`` (a STAC document; globs and lists of images are not)."""
    return (isinstance(images, str) and not any(ch in images for ch in "*?[")
            and images.lower().split("?", 1)[0].rstrip("/").endswith(".json"))


def _stac_io(storage_options: dict[str, Any] | None):
    """A pystac StacIO that reads and writes every href through :mod:`dinoseg_core.io.storage` (fsspec)."""
    import pystac

    class FsspecStacIO(pystac.StacIO):
        def read_text(self, source, *args, **kwargs) -> str:
            return storage.read_bytes(_href(source), storage_options).decode("utf-8")

        def write_text(self, dest, txt: str, *args, **kwargs) -> None:
            storage.write_bytes(_href(dest), txt.encode("utf-8"), storage_options)

    return FsspecStacIO()


def _href(source: Any) -> str:
    return source if isinstance(source, str) else source.get_absolute_href() or source.get_self_href()


def _pystac():
    try:
        import pystac
    except ImportError as exc:  # pragma: no cover - a dependency of dinoseg
        from dinoseg_core.errors import MissingDependencyError

        raise MissingDependencyError("pystac", "Reading STAC catalogs", "pystac") from exc
    return pystac


def read_stac_items(url: str, storage_options: dict[str, Any] | None = None) -> list[Any]:
    """Every ``pystac.Item`` of the STAC document at ``url`` (an ItemCollection, a Catalog or Collection with its
    children followed, or one Item), in the catalog's order, hrefs made absolute.

    Raises:
        InputError: not a STAC document, or one without items.
        StorageError / ObjectNotFoundError: the document or a child cannot be read.
    """
    pystac = _pystac()
    shown = storage.display_url(url)
    try:
        data = json.loads(storage.read_bytes(url, storage_options))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"images={shown!r}: not JSON ({exc}); give a STAC catalog, collection or item collection")
    kind = data.get("type") if isinstance(data, dict) else None
    if kind not in _STAC_TYPES:
        raise InputError(f"images={shown!r}: not a STAC document (type {kind!r}); give a STAC Catalog, Collection, "
                         "ItemCollection or Item")
    io = _stac_io(storage_options)
    try:
        if kind == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(data, preserve_dict=False)
            items = list(collection.items)
            for item in items:  # an ItemCollection's relative hrefs are relative to the file itself
                if item.get_self_href() is None:
                    item.set_self_href(_absolute(url))
                    item.make_asset_hrefs_absolute()
        elif kind == "Feature":
            items = [pystac.Item.from_dict(data, href=_absolute(url), preserve_dict=False)]
            items[0].set_self_href(_absolute(url))
            items[0].make_asset_hrefs_absolute()
        else:
            catalog = pystac.read_file(_absolute(url), stac_io=io)
            items = list(catalog.get_items(recursive=True))
    except DinosegError:
        raise
    except Exception as exc:  # pystac: a malformed document (missing id, bad geometry...)
        raise InputError(f"images={shown!r}: not a valid STAC {kind} ({type(exc).__name__}: {exc})") from None
    if not items:
        raise InputError(f"images={shown!r}: the STAC {kind} has no items")
    return items


def _absolute(url: str) -> str:
    """Local paths made absolute, so that pystac resolves relative links against a full path."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    return url if "://" in url else os.path.abspath(url)


def read_stac_images(url: str, asset: str | None = None, storage_options: dict[str, Any] | None = None,
                     allow_reference_urls: Sequence[str] | None = None) -> list[StacImage]:
    """One :class:`StacImage` per Item of the STAC document at ``url``, duplicates (same href) dropped.

    With ``allow_reference_urls`` (a list, maybe empty), per-band assets are checked to stay on the catalog's
    storage (:func:`dinoseg_core.io.manifest.check_reference_origin`) before they are opened.

    ``asset``: None (``visual``, else the only image asset), an asset key, or comma-separated band names (see the
    module docstring). An Item without the chosen asset is an :class:`InputError` naming the Item and its assets.
    """
    names = [n.strip() for n in asset.split(",") if n.strip()] if asset else []
    if asset is not None and not names:
        raise InputError(f"stac_asset={asset!r}: give an asset key (visual) or band names (red,green,blue)")
    images, seen = [], set()
    for item in read_stac_items(url, storage_options):
        image = _item_image(item, names, url, storage_options, allow_reference_urls)
        if image.url not in seen:
            seen.add(image.url)
            images.append(image)
    return images


def _item_image(item: Any, names: list[str], catalog: str = "", storage_options: dict[str, Any] | None = None,
                allow_reference_urls: Sequence[str] | None = None) -> StacImage:
    assets = item.assets
    keys = ", ".join(sorted(assets)) or "none"
    if not names:
        if "visual" in assets:
            return _image(item, "visual")
        candidates = [k for k, a in assets.items() if _is_image(a)]
        if len(candidates) != 1:
            raise InputError(f"STAC item {item.id!r}: {'no' if not candidates else 'several'} image asset(s) "
                             f"({', '.join(candidates) or 'none'}) and no 'visual' asset; choose one with --stac-asset "
                             f"(run.stac_asset); its assets: {keys}")
        return _image(item, candidates[0])
    if len(names) == 1 and names[0] in assets:
        return _image(item, names[0])
    for key, candidate in assets.items():
        numbers = _band_numbers(candidate, names)
        if numbers is not None:
            return _image(item, key, numbers)
    per_band = _per_band_assets(item, names)
    if per_band is not None:
        if len(per_band) not in (1, 3):
            raise InputError(f"stac_asset={','.join(names)!r}: give 1 band name (grey) or 3 (RGB), got {len(names)}")
        return _stacked(item, per_band, catalog, storage_options, allow_reference_urls)
    raise InputError(f"STAC item {item.id!r}: no asset {','.join(names)!r}, and no asset whose eo:bands hold "
                     f"{', '.join(names)}; its assets: {keys}")


def _image(item: Any, key: str, bands: tuple[int, ...] | None = None) -> StacImage:
    media = (item.assets[key].media_type or "").split(";", 1)[0].strip().lower()
    return StacImage(item.id, _asset_href(item, key), bands, media in ("image/tiff", "image/jp2"))


def _is_image(asset: Any) -> bool:
    roles = set(asset.roles or [])
    if roles & NOT_IMAGE_ROLES:
        return False
    media = (asset.media_type or "").split(";", 1)[0].strip().lower()
    if media:
        return media in IMAGE_MEDIA
    return asset.href.lower().split("?", 1)[0].endswith(_IMAGE_SUFFIXES)


def _band_numbers(asset: Any, names: list[str]) -> tuple[int, ...] | None:
    """1-based numbers of ``names`` among the asset's bands, or None if one is missing (or it lists none)."""
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    if not isinstance(bands, list) or not bands:
        return None
    numbers = []
    for name in names:
        wanted = name.lower()
        found = [i + 1 for i, b in enumerate(bands) if isinstance(b, Mapping)
                 and wanted in (str(b.get("name", "")).lower(), str(b.get("common_name", b.get("eo:common_name", "")))
                                .lower())]
        if not found:
            return None
        numbers.append(found[0])
    if len(numbers) not in (1, 3):
        raise InputError(f"stac_asset={','.join(names)!r}: give 1 band name (grey) or 3 (RGB), got {len(numbers)}")
    return tuple(numbers)


def _single_band(asset: Any) -> set[str]:
    """The lower-case name and common name of an asset's only band (empty: none listed, or several)."""
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    if not isinstance(bands, list) or len(bands) != 1 or not isinstance(bands[0], Mapping):
        return set()
    band = bands[0]
    return {str(v).lower() for v in (band.get("name"), band.get("common_name"), band.get("eo:common_name")) if v}


def _per_band_assets(item: Any, names: list[str]) -> list[str] | None:
    """The asset key of each name (an asset key, else the asset whose only band has that name or common name),
    or None if one name matches no asset."""
    keys = []
    for name in names:
        if name in item.assets:
            keys.append(name)
            continue
        found = [k for k, a in item.assets.items() if name.lower() in _single_band(a)]
        if not found:
            return None
        keys.append(found[0])
    return keys


_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64"}
_VSI = {"s3": "/vsis3/", "s3a": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/"}


def gdal_vsi_path(url: str) -> str:
    """The path GDAL reads ``url`` at inside a VRT: local paths absolute, ``s3://b/k`` -> ``/vsis3/b/k``,
    ``http(s)://`` -> ``/vsicurl/<url>``, ``gs://`` -> ``/vsigs/``; other protocols are an :class:`InputError`."""
    proto = storage.protocol(url)
    if proto == "file":
        return os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)
    if proto in ("http", "https"):
        return "/vsicurl/" + url
    if proto in _VSI:
        return _VSI[proto] + url.split("://", 1)[1]
    raise InputError(f"{storage.display_url(url)}: per-band assets are stacked by GDAL, which reads local paths, "
                     f"s3://, gs:// and http(s):// URLs, not {proto}://; choose one multi-band asset instead")


def vrt_folder(catalog: str) -> str:
    """The local folder of the VRTs stacking the per-band assets of the catalog at ``catalog``:
    ``VRT_DIR/<sha256 of its absolute URL, 16 hex>`` (the items' keys are relative to it)."""
    import hashlib

    root = VRT_DIR or os.path.expanduser("~/.cache/dinoseg/stac-vrt")
    return os.path.join(os.path.abspath(root), hashlib.sha256(_absolute(catalog).encode()).hexdigest()[:16])


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name).lstrip(".") or "item"


def _stacked(item: Any, keys: list[str], catalog: str, storage_options: dict[str, Any] | None,
             allow_reference_urls: Sequence[str] | None = None) -> StacImage:
    """The Item's per-band assets ``keys`` stacked as one VRT (see the module docstring)."""
    from xml.sax.saxutils import escape

    from dinoseg_core.io.raster import _open_dataset

    hrefs = [_asset_href(item, key) for key in keys]
    if allow_reference_urls is not None:
        from dinoseg_core.io.manifest import check_reference_origin

        for href in hrefs:
            check_reference_origin(catalog, href, allow_reference_urls)
    grids = []
    for key, href in zip(keys, hrefs):
        with _open_dataset(href, storage_options) as ds:
            if ds.count != 1:
                raise InputError(f"STAC item {item.id!r}: asset {key!r} has {ds.count} bands; stacking per-band "
                                 "assets takes single-band ones (choose the multi-band asset by its key instead)")
            grids.append((ds.width, ds.height, ds.crs, ds.transform, ds.dtypes[0], ds.nodata))
    width, height, crs, transform, dtype, _ = grids[0]
    for key, (w, h, c, t, d, _) in zip(keys[1:], grids[1:]):
        if d != dtype:
            raise InputError(f"STAC item {item.id!r}: asset {key!r} holds {d} pixels, {keys[0]!r} {dtype}; per-band "
                             "assets must share one pixel type")
        if (w, h) != (width, height) and c == crs and (abs(t.a), abs(t.e)) != (abs(transform.a), abs(transform.e)):
            raise InputError(
                f"STAC item {item.id!r}: asset {key!r} has another resolution ({abs(t.a):g} x {abs(t.e):g}, "
                f"{w}x{h} px) than {keys[0]!r} ({abs(transform.a):g} x {abs(transform.e):g}, {width}x{height} px); "
                "dinoseg does not resample: choose assets of one resolution (e.g. the 10 m bands red,green,blue)")
        if (w, h) != (width, height) or c != crs or not t.almost_equals(transform):
            raise InputError(
                f"STAC item {item.id!r}: asset {key!r} ({w}x{h} px, {c}, {tuple(t)[:6]}) is not on the grid of "
                f"{keys[0]!r} ({width}x{height} px, {crs}, {tuple(transform)[:6]}); per-band assets must share size, "
                "CRS and transform")
    stamps = [storage.stat_stamp(href, storage_options) for href in hrefs]
    colours = ("Red", "Green", "Blue") if len(keys) == 3 else ("Gray",)
    bands = []
    for number, (key, href, grid, colour) in enumerate(zip(keys, hrefs, grids, colours), start=1):
        dtype, nodata = grid[4], grid[5]
        if dtype not in _GDAL_TYPES:
            raise InputError(f"STAC item {item.id!r}: asset {key!r} has pixel type {dtype}, which dinoseg cannot stack")
        nodata_xml = f"    <NoDataValue>{nodata!r}</NoDataValue>\n" if nodata is not None else ""
        bands.append(
            f'  <VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="{number}">\n{nodata_xml}'
            f"    <ColorInterp>{colour}</ColorInterp>\n    <Description>{escape(key)}</Description>\n"
            f'    <SimpleSource>\n      <SourceFilename relativeToVRT="0">{escape(gdal_vsi_path(href))}'
            f"</SourceFilename>\n      <SourceBand>1</SourceBand>\n    </SimpleSource>\n  </VRTRasterBand>\n")
    t = transform
    geo = f"  <GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>\n"
    srs = f"  <SRS>{escape(crs.to_wkt())}</SRS>\n" if crs is not None else ""
    meta = "".join(f'    <MDI key="{escape(k)}">{escape(v)}</MDI>\n' for k, v in
                   [("dinoseg:stac_item", item.id)] + [(f"dinoseg:asset:{key}", f"{href} {stamp}")
                                                       for key, href, stamp in zip(keys, hrefs, stamps)])
    xml = (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n{srs}{geo}  <Metadata>\n{meta}'
           f"  </Metadata>\n{''.join(bands)}</VRTDataset>\n")
    folder = vrt_folder(catalog)
    if item.collection_id:  # ids are unique within a collection only
        folder = os.path.join(folder, _safe(item.collection_id))
    path = os.path.join(folder, _safe(item.id) + ".vrt")
    try:
        with open(path, encoding="utf-8") as handle:
            current = handle.read()
    except OSError:
        current = None
    if current != xml:  # rewritten only when a band (or the choice) changed: its mtime is the item's stamp
        os.makedirs(folder, exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(xml)
        os.replace(temporary, path)
    return StacImage(item.id, path, tuple(range(1, len(keys) + 1)), True, tuple(hrefs))


def _asset_href(item: Any, key: str) -> str:
    href = item.assets[key].get_absolute_href()
    if href is None:
        raise InputError(f"STAC item {item.id!r}: asset {key!r} has a relative href and the item has no location")
    if href.startswith("file://"):
        href = href[len("file://"):]
    return href


# ---------------------------------------------------------------------------------------------------- out


def label_item(
    item_id: str,
    concept: str,
    record: Mapping[str, Any],
    *,
    mask_href: str,
    mask_media_type: str,
    geometry: dict[str, Any] | None,
    bbox: Sequence[float] | None,
    polygons_href: str | None = None,
    source_href: str | None = None,
) -> Any:
    """A STAC Item with the label extension for one archived mask of ``concept``.

    Args:
        item_id: the Item's id (unique within the catalog).
        record: the mask's archive record (provenance: ``created``, ``source_uri``, ``method``...).
        mask_href: the mask's URL (a COG, or the archive record); ``mask_media_type`` its media type.
        geometry, bbox: the mask's footprint in EPSG:4326 (GeoJSON), or None for a mask without georeferencing.
        polygons_href: the concept's polygons (GeoJSON), if exported.
        source_href: the source image; linked with ``rel="source"``.
    """
    import datetime as dt

    pystac = _pystac()
    from pystac.extensions.label import LabelClasses, LabelExtension, LabelMethod, LabelTask, LabelType

    created = record.get("created")
    try:
        when = dt.datetime.fromisoformat(str(created).replace("Z", "+00:00")) if created else None
    except ValueError:
        when = None
    when = when or dt.datetime.now(dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    properties = {"dinoseg:concept": concept, "dinoseg:source_uri": record.get("source_uri")}
    for key in ("method", "backbone", "config_digest", "dinoseg_version"):
        if record.get(key) is not None:
            properties[f"dinoseg:{key}"] = record[key]
    item = pystac.Item(id=item_id, geometry=geometry, bbox=list(bbox) if bbox is not None else None,
                       datetime=when, properties=properties)
    label = LabelExtension.ext(item, add_if_missing=True)
    label.apply(
        label_description=f"{concept} mask: 255 where the image shows {concept}, 0 elsewhere",
        label_type=LabelType.RASTER,
        label_properties=None,  # raster labels: the classes are pixel values, not feature properties
        label_classes=[LabelClasses.create(classes=[0, 255], name=None)],
        label_tasks=[LabelTask.SEGMENTATION],
        label_methods=[LabelMethod.AUTOMATED],
    )
    item.add_asset("labels", pystac.Asset(mask_href, title=f"{concept} mask", media_type=mask_media_type,
                                          roles=["labels", "labels-raster"]))
    if polygons_href:
        item.add_asset("polygons", pystac.Asset(polygons_href, title=f"{concept} polygons",
                                                media_type="application/geo+json", roles=["labels", "labels-vector"]))
    if source_href:
        item.add_link(pystac.Link("source", source_href, title="source image",
                                  extra_fields={"label:assets": ["labels"]}))
    return item


def write_catalog(url: str, items: Iterable[Any], *, catalog_id: str, description: str,
                  storage_options: dict[str, Any] | None = None) -> str:
    """Write ``items`` into a self-contained static catalog at ``url`` (a folder): ``catalog.json`` and
    ``<item id>/<item id>.json``, hrefs relative, through fsspec. Returns the catalog's URL."""
    pystac = _pystac()
    catalog = pystac.Catalog(id=catalog_id, description=description)
    root = url.rstrip("/")
    for item in items:
        catalog.add_item(item)
    catalog.normalize_hrefs(_absolute(root), skip_unresolved=True)  # "source" links point at images
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, stac_io=_stac_io(storage_options))
    return storage.join(root, "catalog.json")


def footprint(record: Mapping[str, Any]) -> tuple[dict[str, Any], list[float]] | None:
    """``(GeoJSON polygon, bbox)`` in EPSG:4326 of a georeferenced mask record (its ``spatial:bbox`` in the source
    CRS, densified when reprojected), or None without georeferencing."""
    from dinoseg_core.geo.georef import georeference_from_attrs

    try:
        _, crs = georeference_from_attrs(record)
    except InputError:
        return None
    from rasterio.warp import transform_bounds

    west, south, east, north = transform_bounds(crs, "EPSG:4326", *record["spatial:bbox"], densify_pts=21)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Polygon", "coordinates": [ring]}, [west, south, east, north]


def write_label_catalog(archive: Any, concept: str, keys: Sequence[str], names: Sequence[str], out: str, *,
                        polygons: bool = False, storage_options: dict[str, Any] | None = None,
                        progress: Callable[[], Any] | None = None) -> tuple[str, int]:
    """A static STAC catalog at ``out`` with one label Item per mask (``keys``, named ``names``) of ``concept``.

    Each Item lives in ``out/<name>-<concept>/``: a georeferenced mask gets its COG there (``<name>.tif``) and,
    with ``polygons``, its polygons as GeoJSON in EPSG:4326 (``<name>.geojson``); a mask without georeferencing
    (a PNG tile) points to its Zarr record in the archive and has no geometry. ``progress`` is called once per
    Item written. Returns (the catalog's URL, the number of Items).
    """
    from dinoseg_core.geo.georef import georeference_from_attrs
    from dinoseg_core.io.cog import gdal_tags, write_cog

    items = []
    for key, name in zip(keys, names):
        record, mask = archive.mask_array(concept, key)
        item_id = f"{name}-{concept}"
        folder = storage.join(out, item_id)
        place = footprint(record)
        polygons_href = None
        if place is None:
            href = storage.join(archive.url, record["group"])
            media = "application/vnd+zarr"
        else:
            transform, crs = georeference_from_attrs(record)
            write_cog(storage.join(folder, f"{name}.tif"), mask, transform, crs, gdal_tags(record), storage_options)
            href, media = f"./{name}.tif", "image/tiff; application=geotiff; profile=cloud-optimized"
            if polygons:
                from dinoseg_core.geo import array_to_polygons, export_vectors

                shapes = array_to_polygons(mask, transform, crs, to_crs="EPSG:4326",
                                           properties={"concept": concept, "source_uri": record["source_uri"]})
                export_vectors(shapes, storage.join(folder, f"{name}.geojson"), "geojson", storage_options,
                               crs="EPSG:4326")
                polygons_href = f"./{name}.geojson"
        item = label_item(item_id, concept, record, mask_href=href, mask_media_type=media,
                          geometry=place[0] if place else None, bbox=place[1] if place else None,
                          polygons_href=polygons_href, source_href=record.get("source_uri"))
        items.append(item)
        if progress is not None:
            progress()
    url = write_catalog(out, items, catalog_id=f"dinoseg-{concept}",
                        description=f"dinoseg masks of '{concept}' from {storage.display_url(archive.url)}",
                        storage_options=storage_options)
    return url, len(items)
