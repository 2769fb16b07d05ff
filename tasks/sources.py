"""Where a labelling job's work comes from: the images of a collection, each a small :class:`WorkItem`.

``images`` may be a glob (``s3://lake/tiles/**/*.png``), a folder or prefix (``s3://lake/tiles/``: every image
under it), a single file (``scene.tif``) or an explicit list of URLs. GeoTIFF/COG items are *scenes*, read window
by window; every other image is a *tile*, decoded whole. A listing gives each object's stamp (ETag or mtime) for
free, which lets an up-to-date item be skipped before it is read.

``images`` may also be a STAC document (a ``.json`` URL: an ItemCollection, Catalog, Collection or Item): each
Item gives one image, the asset ``stac_asset`` chooses (:func:`dinoseg_core.io.stac.read_stac_images`); band
names choose the bands of a multi-band asset, carried on the item as ``bands``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from dinoseg_core.errors import InputError, ObjectNotFoundError
from dinoseg_core.io import storage
from dinoseg_core.io.imageio import RASTER_SUFFIXES
from dinoseg_core.io.manifest import check_reference_origin
from dinoseg_core.io.stac import is_stac, read_stac_images, vrt_folder
from tasks.retry import STORAGE_RETRIES

#: Extensions taken from a folder or prefix (a glob or an explicit list takes what it names).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif") + RASTER_SUFFIXES

ItemKind = Literal["tile", "scene"]


@dataclass(frozen=True)
class WorkItem:
    """One image to label: its URL, its listing stamp (None: not listed, read and hash it), its kind, and its
    1-based bands when a STAC catalog chose them by name (None: the run's bands)."""

    url: str
    stamp: str | None = None
    kind: ItemKind = "tile"
    bands: tuple[int, ...] | None = None


def item_kind(url: str) -> ItemKind:
    """``scene`` for GeoTIFF/COG and other rasters read through rasterio, else ``tile``."""
    return "scene" if url.lower().split("?", 1)[0].endswith(RASTER_SUFFIXES) else "tile"


def is_glob(images: str) -> bool:
    return any(ch in images for ch in "*?[")


def input_prefix(images: str | Sequence[str], items: Sequence[WorkItem] = ()) -> str | None:
    """The folder image keys are relative to: a glob's part before its first wildcard, cut back to a folder; a
    folder itself; a single file's folder (``items``, the listing, tells a file from a folder). None for an
    explicit list (keys keep the whole path)."""
    if not isinstance(images, str):
        return None
    if is_stac(images):  # keys relative to the catalog's folder, or to its VRTs' (stacked per-band assets)
        stacks = vrt_folder(images)
        if items and all(item.url.startswith(stacks + os.sep) for item in items):
            return stacks
        return images.rsplit("/", 1)[0] if "/" in images else ""
    if is_glob(images):
        cut = min(i for i, ch in enumerate(images) if ch in "*?[")
        return images[:cut].rsplit("/", 1)[0]
    if [item.url for item in items] == [images]:
        return images.rsplit("/", 1)[0] if "/" in images else ""
    return images.rstrip("/")


@task(name="list-images", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def list_images(images: str | Sequence[str], storage_options: dict | None = None, stac_asset: str | None = None,
                allow_reference_urls: Sequence[str] = ()) -> list[WorkItem]:
    """The collection's items, sorted (a glob, folder or single file) or in the given order (a list, duplicates
    dropped; a STAC document, in its items' order). A pattern that matches nothing, an empty folder or a missing
    file is an :class:`InputError`; so is an Item without the asset ``stac_asset`` asks for, and, as for a
    manifest's references, an asset outside the catalog's own storage unless it starts with one of
    ``allow_reference_urls`` (a catalog on S3 naming ``file:///etc/...``), refused before anything is read."""
    if is_stac(images):
        found = read_stac_images(images, stac_asset, storage_options, list(allow_reference_urls or ()))
        for image in found:  # a per-band stack's VRT is local: its assets are what must stay on the storage
            for url in image.sources or (image.url,):
                check_reference_origin(images, url, allow_reference_urls)
        return [WorkItem(image.url, None, "scene" if image.raster else item_kind(image.url), image.bands)
                for image in found]
    if stac_asset is not None:
        raise InputError(f"stac_asset={stac_asset!r} chooses the assets of a STAC catalog, but images={images!r} is "
                         "not one (a .json URL); leave stac_asset out")
    if not isinstance(images, str):
        urls = list(dict.fromkeys(images))
        if not urls:
            raise InputError("images: the list is empty; give at least one image URL")
        return [WorkItem(url, None, item_kind(url)) for url in urls]
    if not images.strip():
        raise InputError("images: empty; give a glob ('s3://bucket/tiles/**/*.png'), a folder or a file")
    if is_glob(images):
        found = storage.glob_stamped(images, storage_options)
        if not found:
            raise InputError(f"images={images!r} matches no object")
        return [WorkItem(url, stamp, item_kind(url)) for url, stamp in found]
    fs, path = storage.url_to_fs(images, storage_options)
    if not images.endswith("/") and _is_file(fs, path):
        return [WorkItem(images, storage.stat_stamp(images, storage_options), item_kind(images))]
    found = [(url, stamp) for url, stamp in storage.glob_stamped(storage.join(images, "**"), storage_options)
             if url.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise InputError(f"images={images!r}: no such file, and no image ({', '.join(IMAGE_SUFFIXES)}) under it "
                         "as a folder; give a file, a folder of images or a glob such as 's3://bucket/tiles/*.png'")
    return [WorkItem(url, stamp, item_kind(url)) for url, stamp in found]


def _is_file(fs, path: str) -> bool:
    try:
        fs.invalidate_cache(path)
        return fs.isfile(path)
    except (FileNotFoundError, ObjectNotFoundError):
        return False
