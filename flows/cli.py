"""The ``dinoseg`` command: the core commands (``segment``, ``basis``) plus the pipeline's ``label`` (runs the
``label_collection`` flow) and ``preview`` (overlay PNGs of archived masks)."""

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
    build_parser as build_core_parser,
    given_options,
)
from dinoseg_core.cli import main as core_main


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
    add_backbone_options(label)
    add_config_options(label)
    label.set_defaults(handler=run_label)

    preview = commands.add_parser("preview", help="write overlay PNGs of a concept's masks on their source images")
    preview.add_argument("--archive", required=True, help="Zarr mask archive, path or URL")
    preview.add_argument("--concept", required=True, help="concept name")
    preview.add_argument("--out", required=True, help="output folder, path or URL")
    preview.add_argument("--limit", type=int, default=None, help="at most this many images")
    preview.add_argument("--storage-options", type=json.loads, default=None, help="JSON object for fsspec")
    preview.set_defaults(handler=run_preview)
    return parser


def run_label(args: argparse.Namespace) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.labelling import label_collection

    method = given_options(args)
    state = label_collection(
        references=args.references, images=args.images, archive=args.archive, backbone=args.backbone,
        device=args.device, dtype=args.dtype, storage_options=args.storage_options, method=method or None,
        force=args.force, save_similarity=args.save_similarity, cache=args.cache, batch_size=args.batch_size,
        workers=args.workers, return_state=True,
    )
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):  # the flow itself failed (bad parameter, unreadable manifest...)
        print(f"dinoseg: error: {state.message or summary}", file=sys.stderr)
        return 2
    print(
        f"labelled {summary['labelled']}, skipped {summary['skipped']}, failed {summary['failed']} "
        f"in {summary['seconds']:.1f} s ({summary['seconds_per_labelled_image']:.2f} s per labelled image); "
        f"archive: {args.archive}",
        file=sys.stderr,
    )
    for failure in summary["failures"]:
        print(f"  failed: {failure['uri']}: {failure['reason']}", file=sys.stderr)
    return EXIT_PARTIAL if summary["failed"] else EXIT_OK


def run_preview(args: argparse.Namespace) -> int:
    from dinoseg_core import imageio, storage
    from dinoseg_core.archive import MaskArchive

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


def main(argv: Sequence[str] | None = None) -> int:
    return core_main(argv, parser=build_parser())


if __name__ == "__main__":
    sys.exit(main())
