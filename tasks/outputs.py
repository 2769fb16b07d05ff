"""What a labelling run writes besides the archive, once its batches are done: COGs and overlay artifacts.

- **COGs** (``run.cog_output``): every georeferenced mask of the run (written now, or up to date but without its
  COG yet) as a Cloud-Optimized GeoTIFF in :func:`cog_folder` (``<archive stem>.cogs/<concept>/<image key>.tif``
  beside the archive), through :func:`dinoseg_core.io.cog.write_cog`, with the record's provenance as tags. Masks
  without georeferencing (PNG/JPEG tiles) have no COG. A COG that cannot be written fails its image, with the
  reason: the run promised it.
- **Overlay artifacts**: one contact sheet per concept (up to :data:`SHEET_MASKS` of the run's masks, each drawn on
  its source with a legend) written to :func:`overlay_folder`, and published as a Prefect image artifact when the
  archive's storage gives the PNG a URL a browser can open (``http(s)://``, or an ``s3://``/``gs://`` URL signed for
  :data:`SIGNED_SECONDS`); for a local archive, a markdown artifact naming the file (the Prefect UI cannot show a
  file of the flow's machine).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from dinoseg_core.errors import InputError
from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive, image_key
from tasks.labelling import IO_THREADS, ImageOutcome, LabelJob
from tasks.options import RunOptions, resolved_storage_options
from tasks.retry import STORAGE_RETRIES
from tasks.sources import item_kind

#: Masks per concept on a run's contact sheet, and the side in pixels of each panel.
SHEET_MASKS, PANEL_SIDE = 4, 256
#: How long a signed URL of an overlay stays valid (7 days, the longest S3 allows).
SIGNED_SECONDS = 7 * 24 * 3600


def _sibling(archive_url: str, suffix: str) -> str:
    base = archive_url.rstrip("/")
    return (base[: -len(".zarr")] if base.lower().endswith(".zarr") else base) + suffix


def cog_folder(archive_url: str) -> str:
    """Where ``run.cog_output`` writes: ``s3://lake/masks.zarr`` -> ``s3://lake/masks.cogs``."""
    return _sibling(archive_url, ".cogs")


def overlay_folder(archive_url: str) -> str:
    """Where a run's contact sheets go: ``s3://lake/masks.zarr`` -> ``s3://lake/masks.overlays``."""
    return _sibling(archive_url, ".overlays")


def cog_url(archive_url: str, concept: str, key: str) -> str:
    return storage.join(cog_folder(archive_url), concept, f"{key}.tif")


def write_outputs(outcomes: list[ImageOutcome], job: LabelJob, concepts: Sequence[str], run_id: str,
                  overlay_key: str) -> list[ImageOutcome]:
    """After the batches: COGs when ``job.run.cog_output``, then the overlay artifacts. Returns the outcomes, with
    an image whose COG could not be written turned into a failure naming the COG."""
    done = [o for o in outcomes if o.status != "failed"]
    if job.run.cog_output and done:
        masks = [(concept, image_key(o.uri, job.input_prefix), concept in o.concepts)
                 for o in done for concept in concepts]
        failed = write_cogs(job.archive_url, masks, job.run)
        if failed:
            by_key = {image_key(o.uri, job.input_prefix): o for o in done}
            reasons = {by_key[key].uri: reason for key, reason in failed.items()}
            outcomes = [ImageOutcome(o.uri, "failed", o.concepts, o.seconds, f"COG: {reasons[o.uri]}")
                        if o.uri in reasons else o for o in outcomes]
    written = {c: [image_key(o.uri, job.input_prefix) for o in outcomes if c in o.concepts and o.status == "labelled"]
               for c in concepts}
    if any(written.values()):
        overlay_artifacts(job.archive_url, {c: keys[:SHEET_MASKS] for c, keys in written.items() if keys}, run_id,
                          overlay_key, job.run)
    return outcomes


@task(name="write-cogs", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def write_cogs(archive_url: str, masks: list[tuple[str, str, bool]], run: RunOptions) -> dict[str, str]:
    """Write the COG of each ``(concept, image key, fresh)`` mask that is georeferenced: always when ``fresh``
    (written by this run), else only when its COG is missing. Returns ``{image key: reason}`` of the failures."""
    from dinoseg_core.geo.georef import georeference_from_attrs
    from dinoseg_core.io.cog import gdal_tags, write_cog

    storage_options = resolved_storage_options(run)  # a Secret block's credentials: resolved here, never a parameter

    archive = MaskArchive.open(archive_url, storage_options, mode="r")

    def one(mask: tuple[str, str, bool]) -> str | None:
        concept, key, fresh = mask
        url = cog_url(archive_url, concept, key)
        record = archive.mask_record(concept, key)
        if record is None or (not fresh and storage.exists(url, storage_options)):
            return None
        try:
            transform, crs = georeference_from_attrs(record)
        except InputError:  # a tile without georeferencing: no COG
            return None
        record, array = archive.mask_array(concept, key)
        write_cog(url, array, transform, crs, gdal_tags(record), storage_options)
        return url

    failed: dict[str, str] = {}
    written = 0
    with ThreadPoolExecutor(IO_THREADS) as pool:
        for mask, future in [(m, pool.submit(one, m)) for m in masks]:
            try:
                written += future.result() is not None
            except Exception as exc:  # noqa: BLE001 - one mask's COG fails its image, not the others
                failed[mask[1]] = f"{type(exc).__name__}: {exc}"
    get_run_logger().info("wrote %d COG(s) to %s; %d failed", written, storage.display_url(cog_folder(archive_url)),
                          len(failed))
    return failed


@task(name="overlay-artifacts", cache_policy=NO_CACHE)
def overlay_artifacts(archive_url: str, keys: dict[str, list[str]], run_id: str, key_prefix: str,
                      run: RunOptions) -> dict[str, str]:
    """One contact sheet per concept of ``keys`` (image keys of its masks), written to :func:`overlay_folder` and
    published as an artifact keyed ``<key_prefix>-<concept>``. Returns ``{concept: URL or path of the PNG}``. A
    sheet that cannot be drawn is a warning: the masks are written."""
    storage_options = resolved_storage_options(run)
    archive = MaskArchive.open(archive_url, storage_options, mode="r")
    logger = get_run_logger()
    sheets = {}
    for concept, concept_keys in keys.items():
        try:
            panels = [_panel(archive, concept, key, storage_options) for key in concept_keys]
            url = storage.join(overlay_folder(archive_url), f"{concept}-{run_id[:8]}.png")
            imageio.write_image_png(url, contact_sheet(panels), storage_options)
        except Exception as exc:  # noqa: BLE001
            logger.warning("no overlay of %r: %s: %s", concept, type(exc).__name__, exc)
            continue
        sheets[concept] = url
        artifact_key = f"{key_prefix}-{re.sub(r'[^a-z0-9]+', '-', concept.lower()).strip('-') or 'concept'}"
        description = f"{concept}: {len(panels)} mask(s) of this run on their sources"
        link = browser_url(url, storage_options)
        if link is not None:
            create_image_artifact(image_url=link, key=artifact_key, description=description)
        else:
            create_markdown_artifact(
                f"**{concept}**: contact sheet of {len(panels)} mask(s) written to `{storage.display_url(url)}` "
                "(a file on the flow's machine: the Prefect UI cannot show it; open it there)",
                key=artifact_key, description=description)
    return sheets


def browser_url(url: str, storage_options: dict | None) -> str | None:
    """A URL a browser can open for ``url``: itself for http(s), a signed URL for object stores whose filesystem
    signs (s3, gcs), else None (a local file, or a store that cannot sign)."""
    proto = storage.protocol(url)
    if proto in ("http", "https"):
        return url
    if proto == "file":
        return None
    fs, path = storage.url_to_fs(url, storage_options)
    try:
        return fs.sign(path, expiration=SIGNED_SECONDS)
    except Exception:  # noqa: BLE001 - NotImplementedError, or no credentials to sign with
        return None


def _panel(archive: MaskArchive, concept: str, key: str, storage_options: dict | None) -> np.ndarray:
    """One mask on its source, at most :data:`PANEL_SIDE` px, above a legend (concept, source file, area)."""
    record, mask = archive.mask_array(concept, key)
    source = record["source_uri"]
    height, width = mask.shape
    step = max(1, math.ceil(max(height, width) / PANEL_SIDE))
    small = np.asarray(mask[::step, ::step]) > 0
    if item_kind(source) == "scene":
        from dinoseg_core.io.raster import open_raster, read_overview

        image, _ = read_overview(open_raster(source, None, storage_options), PANEL_SIDE)
    else:
        image = imageio.read_image(source, storage_options)[::step, ::step]
    rows = np.minimum(np.arange(image.shape[0]) * small.shape[0] // image.shape[0], small.shape[0] - 1)
    cols = np.minimum(np.arange(image.shape[1]) * small.shape[1] // image.shape[1], small.shape[1] - 1)
    small = small[rows][:, cols]
    color = imageio.contrast_color(image)
    area = 100.0 * float(small.mean())
    name = source.rstrip("/").rsplit("/", 1)[-1]
    return imageio.legend(imageio.overlay(image, small, color, outline_width=2),
                          [concept, name, f"mask {area:.1f}% of pixels"], color)


def contact_sheet(panels: list[np.ndarray], columns: int = 2, gap: int = 4) -> np.ndarray:
    """``uint8 (H, W, 3)`` panels side by side, ``columns`` per row, on a dark background."""
    if not panels:
        raise InputError("contact_sheet(): no panels")
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    cell_h = max(p.shape[0] for p in panels)
    cell_w = max(p.shape[1] for p in panels)
    sheet = np.full((rows * cell_h + (rows - 1) * gap, columns * cell_w + (columns - 1) * gap, 3), 24, np.uint8)
    for index, panel in enumerate(panels):
        top, left = (index // columns) * (cell_h + gap), (index % columns) * (cell_w + gap)
        sheet[top : top + panel.shape[0], left : left + panel.shape[1]] = panel
    return sheet
