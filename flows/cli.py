"""The ``dinoseg`` command: the core commands (``segment``, ``basis``) plus the pipeline's ``label`` (runs the
``label_collection`` flow) and ``preview`` (overlay PNGs of archived masks), and the open-vocabulary commands
``label-text``, ``train-ovss`` and ``eval-ovss`` (the ``flows.text`` flows)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from dinoseg_core.cli import (
    EXIT_OK,
    EXIT_PARTIAL,
    add_backbone_options,
    add_config_options,
    given_options,
)
from dinoseg_core.cli import (
    build_parser as build_core_parser,
)
from dinoseg_core.cli import main as core_main
from dinoseg_core.errors import InputError
from dinoseg_core.geo.scene import SceneConfig
from dinoseg_core.io.imageio import RASTER_SUFFIXES


def build_parser() -> argparse.ArgumentParser:
    parser = build_core_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    label = commands.add_parser(
        "label", help="label every concept of a reference manifest on a collection, into a Zarr archive (flow)",
        description="Runs the label_collection Prefect flow. Up-to-date masks are skipped; exit code 1 if any "
        "image failed (the others are still written).",
    )
    label.add_argument("--references", required=True, help="reference manifest (YAML/JSON), path or URL")
    label.add_argument("--images", required=True, help="glob of the collection, e.g. 's3://bucket/tiles/**/*.png'")
    label.add_argument("--archive", required=True, help="Zarr mask archive, path or URL (created if missing)")
    label.add_argument("--force", action="store_true", help="relabel everything, even up-to-date masks")
    label.add_argument("--save-similarity", action="store_true", help="also store similarity maps (float16)")
    label.add_argument("--cache", default=None, help="feature cache URL (default ~/.cache/dinoseg/features)")
    label.add_argument("--batch-size", type=int, default=8, help="images per task (default 8)")
    label.add_argument("--workers", type=int, default=2, help="tasks at once (default 2)")
    label.add_argument("--bands", type=_bands, default=None,
                       help="GeoTIFF bands to use as RGB, 1-based like rasterio, e.g. 4,3,2 (scenes only)")
    add_backbone_options(label)
    add_config_options(label)
    _add_dataclass_options(label, SceneConfig, "large scenes: GeoTIFF/COG inputs (*.tif) are windowed",
                           prefix="scene-")
    label.set_defaults(handler=run_label)

    export = commands.add_parser("export", help="turn a concept's georeferenced masks into polygons")
    export.add_argument("--archive", required=True, help="Zarr mask archive, path or URL")
    export.add_argument("--concept", required=True, help="concept name")
    export.add_argument("--out", required=True, help="output file URL (.geojson, .gpkg or .parquet)")
    export.add_argument("--format", choices=["geojson", "gpkg", "parquet"], default=None,
                        help="default: from the file extension")
    export.add_argument("--to-crs", default=None, help="reproject, e.g. EPSG:4326 (default: the source CRS)")
    export.add_argument("--storage-options", type=json.loads, default=None, help="JSON object for fsspec")
    export.set_defaults(handler=run_export)

    preview = commands.add_parser("preview", help="write overlay PNGs of a concept's masks on their source images")
    preview.add_argument("--archive", required=True, help="Zarr mask archive, path or URL")
    preview.add_argument("--concept", required=True, help="concept name")
    preview.add_argument("--out", required=True, help="output folder, path or URL")
    preview.add_argument("--limit", type=int, default=None, help="at most this many images")
    preview.add_argument("--storage-options", type=json.loads, default=None, help="JSON object for fsspec")
    preview.set_defaults(handler=run_preview)
    add_text_commands(commands)
    return parser


def _bands(text: str) -> list[int]:
    try:
        bands = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1-based band numbers separated by commas, e.g. 4,3,2")
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or 3 band numbers, each >= 1, e.g. 4,3,2")
    return bands


def run_label(args: argparse.Namespace) -> int:
    """``label_scenes`` for GeoTIFF/COG collections (or when --bands / --scene-* is given), else
    ``label_collection``."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.labelling import label_collection

    method = given_options(args) or None
    common = dict(references=args.references, images=args.images, archive=args.archive, backbone=args.backbone,
                  device=args.device, dtype=args.dtype, storage_options=args.storage_options, method=method,
                  force=args.force, cache=args.cache, return_state=True)
    scene = _given_dataclass_options(args, SceneConfig, prefix="scene-")
    if args.bands or scene or args.images.lower().endswith(RASTER_SUFFIXES):
        from flows.scenes import label_scenes

        state = label_scenes(bands=args.bands, scene=scene or None, workers=args.workers, **common)
    else:
        state = label_collection(save_similarity=args.save_similarity, batch_size=args.batch_size,
                                 workers=args.workers, **common)
    return report_run(state, args.archive)


def report_run(state, archive: str) -> int:
    """Print a labelling flow's summary; the exit code: 0 all done, 1 some images failed, 2 the run failed."""
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):  # the flow itself failed (bad parameter, unreadable manifest...)
        print(f"dinoseg: error: {state.message or summary}", file=sys.stderr)
        return 2
    print(
        f"labelled {summary['labelled']}, skipped {summary['skipped']}, failed {summary['failed']} "
        f"in {summary['seconds']:.1f} s ({summary['seconds_per_labelled_image']:.2f} s per labelled image); "
        f"archive: {archive}",
        file=sys.stderr,
    )
    for failure in summary["failures"]:
        print(f"  failed: {failure['uri']}: {failure['reason']}", file=sys.stderr)
    return EXIT_PARTIAL if summary["failed"] else EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    """Polygons of every georeferenced mask of a concept, read in blocks, with source URI and concept."""
    from dinoseg_core.io.archive import MaskArchive
    from dinoseg_core.geo import array_to_polygons, export_vectors
    from dinoseg_core.geo.georef import georeference_from_attrs

    archive = MaskArchive.open(args.archive, args.storage_options, mode="r")
    keys = [key for _, key in archive.list_masks(args.concept)]
    if not keys:
        raise InputError(f"--concept {args.concept!r}: no masks in {args.archive}; it has {archive.list_concepts()}")
    records, crs = [], None
    for key in keys:
        record, mask = archive.mask_array(args.concept, key)
        try:
            transform, crs = georeference_from_attrs(record)
        except InputError as exc:
            raise InputError(f"mask {args.concept}/{key} ({record['source_uri']}): {exc}") from None
        records += array_to_polygons(
            mask, transform, crs, to_crs=args.to_crs,
            properties={"source_uri": record["source_uri"], "concept": args.concept, "image_key": key},
        )
    fmt = export_vectors(records, args.out, args.format, args.storage_options, crs=args.to_crs or crs)
    print(f"wrote {len(records)} polygon(s) of '{args.concept}' from {len(keys)} mask(s) to {args.out} ({fmt})",
          file=sys.stderr)
    return EXIT_OK


def run_preview(args: argparse.Namespace) -> int:
    from dinoseg_core.io import imageio, storage
    from dinoseg_core.io.archive import MaskArchive

    archive = MaskArchive.open(args.archive, args.storage_options, mode="r")
    keys = [key for _, key in archive.list_masks(args.concept)][: args.limit]
    for key in keys:
        stored = archive.load(args.concept, key)
        image = imageio.read_image(stored.record["source_uri"], args.storage_options)
        imageio.write_image_png(
            storage.join(args.out, f"{key}.png"), imageio.overlay(image, stored.mask), args.storage_options
        )
    print(f"wrote {len(keys)} overlay(s) of '{args.concept}' to {args.out}", file=sys.stderr)
    return EXIT_OK


# ------------------------------------------------------------------------------------- open-vocabulary commands

def add_text_commands(commands) -> None:
    """``label-text``, ``train-ovss`` and ``eval-ovss``: the flows of :mod:`flows.text`. Their config options are
    generated from :class:`~dinoseg_core.ovseg.OvsegConfig`, :class:`~dinoseg_core.ovseg.TrainConfig` and
    :class:`~dinoseg_core.ovseg.SegHeadConfig`, so the defaults live in one place."""
    from dinoseg_core.ovseg import OvsegConfig, SegHeadConfig, TrainConfig

    label = commands.add_parser(
        "label-text", help="segment classes named in text on a collection, into a Zarr archive (flow)",
        description="Runs the label_with_text Prefect flow: one mask per class and image (zero-shot dino.txt, or a "
        "trained dinov3.seg head with --head). Up-to-date masks are skipped; exit code 1 if any image failed (the "
        "others are still written), 2 if nothing could be done (bad class list, unreadable weights...).",
    )
    label.add_argument("--classes", required=True, help="comma-separated class names, e.g. 'building,road,water'")
    label.add_argument("--images", required=True, help="glob of the collection, e.g. 's3://bucket/tiles/**/*.png'")
    label.add_argument("--archive", required=True, help="Zarr mask archive, path or URL (created if missing)")
    label.add_argument("--force", action="store_true", help="relabel everything, even up-to-date masks")
    label.add_argument("--save-similarity", action="store_true",
                       help="also store each class's probability map (float16) as the mask's similarity array")
    label.add_argument("--concept-prefix", default="", help="prefix of every class's concept name, e.g. 'text-'")
    label.add_argument("--batch-size", type=int, default=8, help="images per task (default 8)")
    label.add_argument("--workers", type=int, default=2, help="tasks at once (default 2)")
    _add_text_model_options(label, head=True)
    _add_dataclass_options(label, OvsegConfig, "open-vocabulary inference options")
    label.set_defaults(handler=run_label_text)

    train = commands.add_parser(
        "train-ovss", help="train the dinov3.seg head on a labelled dataset (flow; towers frozen, resumable)",
        description="Runs the train_ovss Prefect flow. The checkpoint (safetensors) is written every "
        "--checkpoint-every steps and at the end; rerunning with the same --checkpoint resumes.",
    )
    _add_dataset_options(train, split="train2017")
    train.add_argument("--checkpoint", required=True, help="head checkpoint to write (.safetensors), path or URL")
    train.add_argument("--steps", type=int, required=True, help="total optimiser steps")
    train.add_argument("--no-resume", dest="resume", action="store_false", help="start over, ignoring a checkpoint")
    train.add_argument("--log-every", type=int, default=50, help="steps per point of the loss curve (default 50)")
    _add_text_model_options(train, head=False)
    _add_dataclass_options(train, TrainConfig, "training options")
    _add_dataclass_options(train, SegHeadConfig, "head architecture options", prefix="head-", exclude=("feature_dim",))
    train.set_defaults(handler=run_train_ovss)

    evaluate = commands.add_parser(
        "eval-ovss", help="mIoU per class and overall of zero-shot dino.txt or a trained head (flow)",
        description="Runs the evaluate_ovss Prefect flow and prints the per-class IoU table (Markdown) on stdout.",
    )
    _add_dataset_options(evaluate, split="val2017")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    evaluate.add_argument("--json", dest="json_out", default=None, help="also write the result as JSON here")
    _add_text_model_options(evaluate, head=True)
    _add_dataclass_options(evaluate, OvsegConfig, "open-vocabulary inference options")
    evaluate.set_defaults(handler=run_eval_ovss)


def _add_text_model_options(parser: argparse.ArgumentParser, head: bool) -> None:
    from dinoseg_core.cli import _json_object

    group = parser.add_argument_group("text model and storage")
    group.add_argument("--dinotxt", required=True,
                       help="Meta's dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth (path or URL), or "
                       "random:tiny for tests")
    group.add_argument("--bpe", default=None, help="CLIP's bpe_simple_vocab_16e6.txt.gz (required for real weights)")
    group.add_argument("--backbone", default=None,
                       help="backbone spec (required for real weights: dinov3-vitl16 or Meta's ViT-L/16 .pth)")
    if head:
        group.add_argument("--head", default=None, help="trained dinov3.seg head checkpoint (default: zero-shot)")
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="backbone dtype")
    group.add_argument("--storage-options", type=_json_object, default=None,
                       help="JSON object passed to fsspec for every URL")


def _add_dataset_options(parser: argparse.ArgumentParser, split: str) -> None:
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", required=True, help="dataset root, path or URL")
    group.add_argument("--layout", choices=["folder", "coco-stuff"], default="folder",
                       help="folder: <root>/images/* + <root>/annotations/*.png (values index --classes); "
                       "coco-stuff: <root>/{images,annotations}/<split>/ with --class-table (default folder)")
    group.add_argument("--classes", default=None, help="comma-separated names of label values 0, 1, ... (folder)")
    group.add_argument("--class-table", default=None, help="raw id -> class name table, JSON or text (coco-stuff)")
    group.add_argument("--split", default=split, help=f"coco-stuff split (default {split})")


def _add_dataclass_options(parser: argparse.ArgumentParser, config_cls: type, title: str, prefix: str = "",
                           exclude: tuple[str, ...] = ()) -> None:
    """One ``--<prefix><field>`` option per field of a config dataclass (``short_side`` -> ``--short-side``)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(config_cls):
        if field.name in exclude:
            continue
        flag = "--" + prefix + field.name.replace("_", "-")
        dest = prefix.replace("-", "_") + field.name
        default = field.default
        shown = ", ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{field.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
        hint = hints[field.name]
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = kinds[0] if len(kinds) == 1 and typing.get_origin(hint) is not typing.Literal else hint
        if inner is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(inner) is typing.Literal:
            group.add_argument(flag, dest=dest, choices=typing.get_args(inner), default=None, help=help_text)
        elif typing.get_origin(inner) is tuple:
            group.add_argument(flag, dest=dest, nargs="+", type=typing.get_args(inner)[0], default=None,
                               help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=inner, default=None, help=help_text)


def _given_dataclass_options(args: argparse.Namespace, config_cls: type, prefix: str = "",
                             exclude: tuple[str, ...] = ()) -> dict:
    """The config fields the user gave on the command line (field name -> value)."""
    import dataclasses

    given = {}
    for field in dataclasses.fields(config_cls):
        value = getattr(args, prefix.replace("-", "_") + field.name, None)
        if field.name not in exclude and value is not None:
            given[field.name] = value
    return given


def _flow_error(state) -> int:
    print(f"dinoseg: error: {state.message}", file=sys.stderr)
    return 2


def run_label_text(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from dinoseg_core.ovseg import OvsegConfig
    from flows.text import label_with_text

    state = label_with_text(
        classes=args.classes, images=args.images, archive=args.archive, dinotxt=args.dinotxt, bpe=args.bpe,
        backbone=args.backbone, head=args.head, device=args.device, dtype=args.dtype,
        storage_options=args.storage_options, options=_given_dataclass_options(args, OvsegConfig) or None,
        force=args.force, save_similarity=args.save_similarity, concept_prefix=args.concept_prefix,
        batch_size=args.batch_size, workers=args.workers, return_state=True,
    )
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):  # the flow itself failed (bad class list, unreadable weights...)
        return _flow_error(state)
    print(
        f"labelled {summary['labelled']}, skipped {summary['skipped']}, failed {summary['failed']} "
        f"in {summary['seconds']:.1f} s ({summary['seconds_per_labelled_image']:.2f} s per labelled image); "
        f"concepts: {', '.join(f'{k} -> {v}' for k, v in summary['concepts'].items())}; archive: {args.archive}",
        file=sys.stderr,
    )
    for failure in summary["failures"]:
        print(f"  failed: {failure['uri']}: {failure['reason']}", file=sys.stderr)
    return EXIT_PARTIAL if summary["failed"] else EXIT_OK


def run_train_ovss(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from dinoseg_core.ovseg import SegHeadConfig, TrainConfig
    from flows.text import train_ovss

    state = train_ovss(
        dataset=args.dataset, dinotxt=args.dinotxt, checkpoint=args.checkpoint, steps=args.steps,
        classes=args.classes, class_table=args.class_table, layout=args.layout, split=args.split, bpe=args.bpe,
        backbone=args.backbone, device=args.device, dtype=args.dtype, storage_options=args.storage_options,
        train=_given_dataclass_options(args, TrainConfig) or None,
        head=_given_dataclass_options(args, SegHeadConfig, "head-", ("feature_dim",)) or None,
        resume=args.resume, log_every=args.log_every, return_state=True,
    )
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        return _flow_error(state)
    print(f"trained {result['steps']} steps (resumed from {result['resumed_from']}): loss {result['first_loss']} -> "
          f"{result['final_loss']}, {result['seconds_per_step']:.3f} s per step; checkpoint: {args.checkpoint}",
          file=sys.stderr)
    return EXIT_OK


def run_eval_ovss(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from dinoseg_core.io import storage
    from dinoseg_core.ovseg import OvsegConfig
    from flows.text import evaluate_ovss

    state = evaluate_ovss(
        dataset=args.dataset, dinotxt=args.dinotxt, head=args.head, classes=args.classes,
        class_table=args.class_table, layout=args.layout, split=args.split, bpe=args.bpe, backbone=args.backbone,
        device=args.device, dtype=args.dtype, storage_options=args.storage_options,
        options=_given_dataclass_options(args, OvsegConfig) or None, limit=args.limit, return_state=True,
    )
    result = state.result(raise_on_failure=False)
    if not isinstance(result, dict):
        return _flow_error(state)
    print(result["markdown"])
    if args.json_out:
        storage.write_bytes(args.json_out, json.dumps(result, indent=2).encode(), args.storage_options)
    miou = "n/a" if result["miou"] is None else f"{100 * result['miou']:.1f} %"
    print(f"mIoU {miou} over {result['images']} image(s) ({result['mode']}"
          f"{', RANDOM WEIGHTS' if result['random_weights'] else ''})", file=sys.stderr)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return core_main(argv, parser=build_parser())


if __name__ == "__main__":
    sys.exit(main())
