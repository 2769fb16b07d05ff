"""Open-vocabulary commands, the flows of :mod:`flows.text`: ``label-text`` (classes named in text on a
collection), ``train-ovss`` (train the dinov3.seg head) and ``eval-ovss`` (mIoU). Their config options are
generated from :class:`~dinoseg_core.ovseg.config.OvsegConfig`, :class:`~dinoseg_core.ovseg.config.TrainConfig`
and :class:`~dinoseg_core.ovseg.config.SegHeadConfig`."""

from __future__ import annotations

import argparse
import json
import sys

from dinoseg.cli.options import (
    DEVICE_OPTIONS,
    EXIT_OK,
    add_collection_options,
    add_command,
    add_run_options,
    bands,
    collection_images,
    config_options,
    require_local,
    run_options,
)
from dinoseg.cli.prefect_api import report_labelling, run_flow
from dinoseg_core.config import SceneConfig, SceneOptions, add_options, apply_options
from dinoseg_core.errors import InputError
from dinoseg_core.ovseg.classes import require_background
from dinoseg_core.ovseg.config import HeadOptions, OvsegConfig, OvsegOptions, SegHeadConfig, TrainConfig, TrainOptions

INFERENCE_TITLE = "open-vocabulary inference options"
#: Scene options of INSID3 only (similarity fusion weight, foreground threshold): classes compete per pixel.
SCENE_INSID3_ONLY = ("global_weight", "threshold")


def add_commands(commands) -> None:
    label = add_command(commands, "label-text", run_label_text,
                        help="segment classes named in text on a collection, into a Zarr archive (flow)")
    label.add_argument("--classes", required=True,
                       help="comma-separated class names, e.g. 'building,road,water', or @classes.txt (any URL after "
                       "@): one class per line, '#' comments, 'name: prompt1; prompt2' synonyms")
    add_collection_options(label)
    label.add_argument("--concept-prefix", default="", help="prefix of every class's concept name, e.g. 'text-'")
    label.add_argument("--bands", type=bands, default=None,
                       help="GeoTIFF bands to use as RGB, 1-based like rasterio, e.g. 4,3,2 (scenes only)")
    _add_text_model_options(label, head=True)
    add_run_options(label)
    add_options(label, OvsegConfig, INFERENCE_TITLE)
    add_options(label, SceneConfig, "large scenes: GeoTIFF/COG inputs (*.tif) are windowed, each window an image "
                "(window default --short-side: full resolution; context default --window)", prefix="scene-",
                exclude=SCENE_INSID3_ONLY)

    train = add_command(commands, "train-ovss", run_train_ovss,
                        help="train the dinov3.seg head on a labelled dataset (flow; towers frozen, resumable)")
    _add_dataset_options(train, split="train2017")
    train.add_argument("--checkpoint", required=True, help="head checkpoint to write (.safetensors), path or URL")
    train.add_argument("--steps", type=int, required=True, help="total optimiser steps")
    train.add_argument("--no-resume", dest="resume", action="store_false", help="start over, ignoring a checkpoint")
    train.add_argument("--allow-changes", action="store_true",
                       help="resume even where the training settings, classes or dataset differ from the "
                       "checkpoint's (refused otherwise, naming them)")
    train.add_argument("--log-every", type=int, default=50, help="steps per point of the loss curve (default 50)")
    _add_text_model_options(train, head=False)
    add_run_options(train, only=DEVICE_OPTIONS)
    add_options(train, TrainConfig, "training options")
    add_options(train, SegHeadConfig, "head architecture options", prefix="head-", exclude=("feature_dim",))
    train.add_argument("--head", dest="head_kind", choices=["small", "catseg"], default=None,
                       help="head architecture, the same as --head-kind (default: "
                       f"{SegHeadConfig().kind}); a checkpoint of another kind is not resumed")

    evaluate = add_command(commands, "eval-ovss", run_eval_ovss,
                           help="mIoU per class and overall of zero-shot dino.txt or a trained head (flow)")
    _add_dataset_options(evaluate, split="val2017")
    evaluate.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    evaluate.add_argument("--json", dest="json_out", default=None, help="also write the result as JSON here")
    _add_text_model_options(evaluate, head=True)
    add_run_options(evaluate, only=DEVICE_OPTIONS)
    add_options(evaluate, OvsegConfig, INFERENCE_TITLE)


def _add_text_model_options(parser: argparse.ArgumentParser, head: bool) -> None:
    group = parser.add_argument_group("text model")
    group.add_argument("--dinotxt", required=True,
                       help="Meta's dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth (path or URL), or "
                       "random:tiny for tests")
    group.add_argument("--bpe", default=None, help="CLIP's bpe_simple_vocab_16e6.txt.gz (required for real weights)")
    group.add_argument("--backbone", default=None,
                       help="backbone spec (required for real weights: dinov3-vitl16 or Meta's ViT-L/16 .pth)")
    if head:
        group.add_argument("--head", default=None, help="trained dinov3.seg head checkpoint (default: zero-shot)")


def _add_dataset_options(parser: argparse.ArgumentParser, split: str) -> None:
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", required=True, help="dataset root, path or URL")
    group.add_argument("--layout", choices=["folder", "coco-stuff"], default="folder",
                       help="folder: <root>/images/* + <root>/annotations/*.png (values index --classes); "
                       "coco-stuff: <root>/{images,annotations}/<split>/ with --class-table (default folder)")
    group.add_argument("--classes", default=None,
                       help="comma-separated names of label values 0, 1, ... (folder), or @classes.txt (one per line)")
    group.add_argument("--class-table", default=None,
                       help="raw id -> class name table, JSON or 'id name' lines (coco-stuff; or the folder layout "
                       "instead of --classes, when annotations hold raw ids)")
    group.add_argument("--split", default=split, help=f"coco-stuff split (default {split})")


def _check_text_model(args: argparse.Namespace) -> None:
    """Local weight files must exist (``random:`` specs and remote URLs are checked when loaded)."""
    for flag in ("dinotxt", "bpe", "head"):
        require_local(getattr(args, flag, None), f"--{flag}")


def _check_dataset(args: argparse.Namespace) -> None:
    require_local(args.dataset, "--dataset")
    require_local(args.class_table, "--class-table")
    if args.classes is not None:
        from dinoseg_core.io.classfile import read_classes

        read_classes(args.classes)


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise InputError(f"{flag} {value}: must be at least 1")


def run_label_text(args: argparse.Namespace) -> int:
    """Runs the label_with_text Prefect flow: one mask per class and image (zero-shot dino.txt, or a trained
    dinov3.seg head with --head). Up-to-date masks are skipped. Exit code 1 if some images failed (the others are
    written), 2 if nothing could be done (bad class list, unreadable weights...)."""
    run = run_options(args)
    options = config_options(args, OvsegOptions, OvsegConfig())
    scene = config_options(args, SceneOptions, SceneConfig(), prefix="scene-", exclude=SCENE_INSID3_ONLY)
    # before any server starts: a bad class file, or one class with nothing to compete with
    from dinoseg_core.io.classfile import read_classes

    require_background(read_classes(args.classes, run.storage_options).names,
                       options.model_dump(exclude_none=True) if options is not None else {})
    from dinoseg_core.ovseg.config import resolve_scene_config

    # and a scene overlap not below the scene window
    resolve_scene_config(apply_options(SceneConfig(), scene), apply_options(OvsegConfig(), options))
    images = collection_images(args)
    _check_text_model(args)
    summary = run_flow(
        "flows.text", "label_with_text", classes=args.classes, images=images, archive=args.archive,
        dinotxt=args.dinotxt, bpe=args.bpe, backbone=args.backbone, head=args.head, options=options,
        concept_prefix=args.concept_prefix, scene=scene, bands=args.bands, run=run,
    )
    concepts = ", ".join(f"{k} -> {v}" for k, v in summary["concepts"].items())
    return report_labelling(summary, args.archive, extra=f"concepts: {concepts}; ")


def run_train_ovss(args: argparse.Namespace) -> int:
    """Runs the train_ovss Prefect flow. The checkpoint (safetensors) is written every --checkpoint-every steps
    and at the end; rerunning with the same --checkpoint resumes."""
    _positive(args.steps, "--steps")
    _positive(args.log_every, "--log-every")
    device = run_options(args, only=DEVICE_OPTIONS)
    train = config_options(args, TrainOptions, TrainConfig())
    head = config_options(args, HeadOptions, SegHeadConfig(), prefix="head-", exclude=("feature_dim",))
    _check_dataset(args)
    _check_text_model(args)
    result = run_flow(
        "flows.text", "train_ovss", dataset=args.dataset, dinotxt=args.dinotxt, checkpoint=args.checkpoint,
        steps=args.steps, classes=args.classes, class_table=args.class_table, layout=args.layout, split=args.split,
        bpe=args.bpe, backbone=args.backbone, **device.model_dump(include=set(DEVICE_OPTIONS)), train=train,
        head=head, resume=args.resume, log_every=args.log_every, allow_changes=args.allow_changes,
    )
    print(f"trained {result['steps']} steps (resumed from {result['resumed_from']}): loss {result['first_loss']} -> "
          f"{result['final_loss']}, {result['seconds_per_step']:.3f} s per step; checkpoint: {args.checkpoint}",
          file=sys.stderr)
    return EXIT_OK


def run_eval_ovss(args: argparse.Namespace) -> int:
    """Runs the evaluate_ovss Prefect flow and prints the per-class IoU table (Markdown) on stdout."""
    _positive(args.limit, "--limit")
    device = run_options(args, only=DEVICE_OPTIONS)
    options = config_options(args, OvsegOptions, OvsegConfig())
    _check_dataset(args)
    _check_text_model(args)
    result = run_flow(
        "flows.text", "evaluate_ovss", dataset=args.dataset, dinotxt=args.dinotxt, head=args.head,
        classes=args.classes, class_table=args.class_table, layout=args.layout, split=args.split, bpe=args.bpe,
        backbone=args.backbone, **device.model_dump(include=set(DEVICE_OPTIONS)), options=options, limit=args.limit,
    )
    print(result["markdown"])
    if args.json_out:
        from dinoseg_core.io import storage

        storage.write_bytes(args.json_out, json.dumps(result, indent=2).encode(), device.storage_options)
    miou = "n/a" if result["miou"] is None else f"{100 * result['miou']:.1f} %"
    print(f"mIoU {miou} over {result['images']} image(s) ({result['mode']}"
          f"{', RANDOM WEIGHTS' if result['random_weights'] else ''})", file=sys.stderr)
    return EXIT_OK
