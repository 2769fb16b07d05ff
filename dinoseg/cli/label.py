"""Commands over a Zarr mask archive: ``label`` (the ``label_collection`` flow: a reference manifest on a
collection of tiles and GeoTIFF/COG scenes), ``preview`` (overlay PNGs), ``export`` (polygons, COGs) and
``vacuum`` (unpublished versions left by crashed writers)."""

from __future__ import annotations

import argparse
import sys

from dinoseg.cli.options import (
    EXIT_OK,
    add_backbone_option,
    add_collection_options,
    add_command,
    add_run_options,
    bands,
    collection_images,
    config_options,
    local_path,
    require_local,
    run_options,
)
from dinoseg.cli.prefect_api import report_labelling, run_flow
from dinoseg.cli.segment import METHOD_TITLE
from dinoseg_core.config import InsidConfig, MethodOptions, SceneConfig, SceneOptions, add_options
from dinoseg_core.errors import InputError


def add_commands(commands) -> None:
    label = add_command(
        commands, "label", run_label,
        help="label every concept of a reference manifest on a collection, into a Zarr archive (flow)")
    label.add_argument("--references", required=True, help="reference manifest (YAML/JSON), path or URL")
    add_collection_options(label)
    add_backbone_option(label)
    label.add_argument("--bands", type=bands, default=None,
                       help="GeoTIFF bands to use as RGB, 1-based like rasterio, e.g. 4,3,2 (scenes only)")
    add_run_options(label)
    add_options(label, InsidConfig, METHOD_TITLE)
    add_options(label, SceneConfig, "large scenes: GeoTIFF/COG inputs (*.tif) are windowed", prefix="scene-")

    preview = add_command(commands, "preview", run_preview,
                          help="write overlay PNGs of a concept's masks on their source images")
    _add_archive_options(preview)
    preview.add_argument("--out", required=True, help="output folder, path or URL")
    preview.add_argument("--limit", type=int, default=None, help="at most this many images")

    export = add_command(commands, "export", run_export,
                         help="turn a concept's georeferenced masks into polygons, Cloud-Optimized GeoTIFFs or a STAC "
                         "catalog of label items")
    _add_archive_options(export)
    export.add_argument("--out", required=True,
                        help="output file URL (.geojson, .gpkg or .parquet); with --format cog or stac, a folder")
    export.add_argument("--format", choices=["geojson", "gpkg", "parquet", "cog", "stac"], default=None,
                        help="default: from the file extension; cog: one <source stem>.<concept>.tif per mask; stac: "
                        "a static catalog, one label Item per mask with its COG (or its Zarr record)")
    export.add_argument("--to-crs", default=None, help="reproject, e.g. EPSG:4326 (default: the source CRS)")
    export.add_argument("--polygons", action="store_true",
                        help="with --format stac: also each Item's polygons as GeoJSON (EPSG:4326)")


    vacuum = add_command(commands, "vacuum", run_vacuum,
                         help="delete unpublished mask versions left by crashed writers (never a published one)")
    vacuum.add_argument("--archive", required=True, help="Zarr mask archive, path or URL")
    vacuum.add_argument("--older-than-hours", type=_positive_hours, default=24.0,
                        help="grace period: younger versions may belong to a run still writing (default: 24)")
    add_run_options(vacuum, only=("storage_options",))


def _positive_hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = -1.0
    if not hours > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of hours above 0, e.g. 24")
    return hours


def _add_archive_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archive", required=True, help="Zarr mask archive, path or URL")
    parser.add_argument("--concept", required=True, help="concept name")
    add_run_options(parser, only=("storage_options",))


def run_label(args: argparse.Namespace) -> int:
    """Runs the label_collection Prefect flow (on the server at PREFECT_API_URL, else on a temporary one): every
    concept of the reference manifest on every image. Tiles are segmented whole, GeoTIFF/COG scenes window by
    window; up-to-date masks are skipped. Exit code 1 if some images failed (the others are written), 2 if
    nothing could be done."""
    run = run_options(args)
    method = config_options(args, MethodOptions, InsidConfig())
    scene = config_options(args, SceneOptions, SceneConfig(), prefix="scene-")
    _check_local_manifest(args.references, run.allow_reference_urls)
    images = collection_images(args)
    summary = run_flow(
        "flows.labelling", "label_collection", references=args.references, images=images, archive=args.archive,
        backbone=args.backbone, method=method, scene=scene, bands=args.bands, run=run,
    )
    return report_labelling(summary, args.archive)


def _check_local_manifest(url: str, allow_reference_urls: list[str] | None = None) -> None:
    """A local manifest is read and validated now, its references' origins included (a remote one is read by the
    flow)."""
    require_local(url, "--references")
    if local_path(url) is not None:
        from dinoseg_core.io.manifest import load_manifest

        load_manifest(url, allow_reference_urls=allow_reference_urls or ())


def _open_archive(args: argparse.Namespace):
    from dinoseg_core.io.archive import MaskArchive

    require_local(args.archive, "--archive")
    return MaskArchive.open(args.archive, args.storage_options, mode="r")


def run_vacuum(args: argparse.Namespace) -> int:
    """Delete the mask versions that no record points at (a writer crashed between writing and publishing them)
    and that are older than the grace period, so that a run still writing elsewhere is never disturbed. Published
    masks are never touched. The vacuum_archive flow does the same on a schedule (prefect.yaml)."""
    from dinoseg_core.io.archive import MaskArchive

    require_local(args.archive, "--archive")
    archive = MaskArchive.open(args.archive, args.storage_options, mode="r+")
    removed = archive.vacuum(args.older_than_hours * 3600.0)
    print(f"removed {removed} unpublished version(s) older than {args.older_than_hours:g} h from {args.archive}",
          file=sys.stderr)
    return EXIT_OK


def run_preview(args: argparse.Namespace) -> int:
    """Write OUT/<source stem>.png (``-2``, ``-3``, ... where stems repeat): each archived mask of the concept
    outlined and filled on its source image in a colour that contrasts with it, above a legend with the concept,
    the source file name and the mask's area."""
    from dinoseg_core.io import imageio, storage

    archive = _open_archive(args)
    keys = [key for _, key in archive.list_masks(args.concept)][: args.limit]
    records = [archive.mask_record(args.concept, key) for key in keys]
    for key, name, record in zip(keys, unique_names([r["source_uri"] for r in records]), records):
        stored = archive.load(args.concept, key)
        image = imageio.read_image(stored.record["source_uri"], args.storage_options)
        color = imageio.contrast_color(image)
        area = 100.0 * float(stored.mask.mean())
        source = stored.record["source_uri"].rstrip("/").rsplit("/", 1)[-1]
        width = max(2, min(stored.mask.shape) // 128)  # an outline that small objects keep
        panel = imageio.legend(imageio.overlay(image, stored.mask, color, outline_width=width),
                               [args.concept, source, f"mask {area:.1f}% of pixels"], color)
        imageio.write_image_png(storage.join(args.out, f"{name}.png"), panel, args.storage_options)
    print(f"wrote {len(keys)} overlay(s) of '{args.concept}' to {args.out}", file=sys.stderr)
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    """Write the polygons of every georeferenced mask of a concept (scenes labelled from GeoTIFF/COG), with their
    source URI and concept, as GeoJSON, GeoPackage or GeoParquet."""
    from dinoseg_core.geo.export import export_vectors, polygons_of_masks

    archive = _open_archive(args)
    keys = [key for _, key in archive.list_masks(args.concept)]
    if not keys:
        raise InputError(f"--concept {args.concept!r}: no masks in {args.archive}; it has {archive.list_concepts()}")
    if args.polygons and args.format != "stac":
        raise InputError("--polygons adds polygons to STAC items: use it with --format stac")
    if args.format in ("cog", "stac"):
        if args.to_crs:
            raise InputError(f"--to-crs reprojects polygons; --format {args.format} keeps the source's grid: leave "
                             "--to-crs out")
        return _export_cogs(args, archive, keys) if args.format == "cog" else _export_stac(args, archive, keys)
    def masks():  # read one at a time: a mask's pixels only once its georeferencing is known
        for key in _bar(keys, "export"):
            record, mask = archive.mask_array(args.concept, key)
            yield (record["source_uri"], record, mask,
                   {"source_uri": record["source_uri"], "concept": args.concept, "image_key": key})

    records, crs, skipped = polygons_of_masks(masks(), to_crs=args.to_crs)
    for uri, reason in skipped:  # a scene without a CRS, a PNG tile: skipped, not failing the others
        print(f"skipped {uri}: {reason}", file=sys.stderr)
    if len(skipped) == len(keys):
        raise InputError(f"--concept {args.concept!r}: none of its {len(keys)} mask(s) in {args.archive} is "
                         "georeferenced (made from a GeoTIFF/COG with a CRS); nothing to export")
    fmt = export_vectors(records, args.out, args.format, args.storage_options, crs=crs)
    print(f"wrote {len(records)} polygon(s) of '{args.concept}' from {len(keys) - len(skipped)} mask(s) to "
          f"{args.out} ({fmt}), skipped {len(skipped)}", file=sys.stderr)
    return EXIT_OK


def _export_cogs(args: argparse.Namespace, archive, keys: list[str]) -> int:
    """OUT/<source stem>.<concept>.tif for every georeferenced mask of the concept, read in blocks; a mask without
    georeferencing (a PNG tile) is skipped and named."""
    from dinoseg_core.geo.georef import georeference_from_attrs
    from dinoseg_core.io import storage
    from dinoseg_core.io.cog import gdal_tags, write_cog

    written, skipped = [], []
    names = unique_names([archive.mask_record(args.concept, key)["source_uri"] for key in keys])
    for key, name in _bar(list(zip(keys, names)), "export cog"):
        record, mask = archive.mask_array(args.concept, key)
        try:
            transform, crs = georeference_from_attrs(record)
        except InputError:
            skipped.append(record["source_uri"])
            continue
        url = storage.join(args.out, f"{name}.{args.concept}.tif")
        write_cog(url, mask, transform, crs, gdal_tags(record), args.storage_options)
        written.append(url)
    for uri in skipped:
        print(f"skipped {uri}: no georeferencing (not made from a GeoTIFF)", file=sys.stderr)
    print(f"wrote {len(written)} COG(s) of '{args.concept}' to {args.out}, skipped {len(skipped)}", file=sys.stderr)
    return EXIT_OK


def _export_stac(args: argparse.Namespace, archive, keys: list[str]) -> int:
    """OUT/catalog.json and one STAC label Item per mask (dinoseg_core.io.stac.write_label_catalog)."""
    from dinoseg_core.io.stac import write_label_catalog

    names = unique_names([archive.mask_record(args.concept, key)["source_uri"] for key in keys])
    bar = _bar(keys, "export stac")
    url, count = write_label_catalog(archive, args.concept, keys, names, args.out, polygons=args.polygons,
                                     storage_options=args.storage_options, progress=bar.update)
    bar.close()
    print(f"wrote a STAC catalog of {count} label item(s) of '{args.concept}': {url}", file=sys.stderr)
    return EXIT_OK


def _bar(items: list, desc: str):
    """A progress bar over ``items`` (masks: done, masks/s, ETA), drawn on a terminal only."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="mask", disable=None, dynamic_ncols=True)


def unique_names(uris: list[str]) -> list[str]:
    """Output names from source URIs: each source's stem, with ``-2``, ``-3``, ... added where stems repeat."""
    from dinoseg_core.io import storage

    seen: dict[str, int] = {}
    names = []
    for uri in uris:
        stem = storage.stem(uri)
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names
