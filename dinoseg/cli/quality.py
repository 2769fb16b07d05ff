"""Quality commands, the flows of :mod:`flows.evaluation`: ``evaluate`` (INSID3's few-shot mIoU and FB-IoU on a
labelled collection) and ``calibrate`` (tune each concept's tau and merge_threshold on its own shots, and its scene
global weight on held-out scenes, into a new reference manifest). Labelled-collection layouts:
:mod:`dinoseg_core.io.fss_datasets` and ``docs/quality.md``."""

from __future__ import annotations

import argparse
import sys

from dinoseg.cli.options import (
    EXIT_OK,
    add_backbone_option,
    add_command,
    add_run_options,
    bands,
    config_options,
    local_path,
    require_local,
    run_options,
)
from dinoseg.cli.prefect_api import run_flow
from dinoseg.cli.segment import METHOD_TITLE
from dinoseg_core.config import InsidConfig, MethodOptions, SceneConfig, SceneOptions, add_options
from dinoseg_core.errors import InputError

LAYOUTS = ("auto", "folder", "manifest", "isaid", "coco20i")
#: Run options that matter to these commands (they run no label batches).
QUALITY_RUN_OPTIONS = ("device", "dtype", "storage_options", "secret_storage_options", "allow_reference_urls",
                       "cluster_backend", "compile", "concurrency_limit")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number, e.g. 0.8") from None
    return value


def add_commands(commands) -> None:
    evaluate = add_command(commands, "evaluate", run_evaluate,
                           help="few-shot mIoU and FB-IoU of INSID3 on a labelled collection, fold by fold (flow)")
    evaluate.add_argument("--dataset", required=True,
                          help="labelled collection: a folder (images/ + masks/<concept>/), a manifest (.yaml/.json), "
                          "an iSAID-5i or a COCO-20i root; path or URL")
    evaluate.add_argument("--layout", choices=LAYOUTS, default="auto", help="default: detected")
    evaluate.add_argument("--fold", dest="folds", type=int, nargs="+", default=None,
                          help="folds to evaluate, 0-based (default: all)")
    evaluate.add_argument("--shots", type=_positive_int, default=1, help="support images per episode (default 1)")
    evaluate.add_argument("--episodes", type=_positive_int, default=1000, help="episodes per fold (default 1000)")
    evaluate.add_argument("--seed", type=int, default=0, help="episode sampling seed (default 0)")
    evaluate.add_argument("--split", default="val", help="benchmark split of iSAID-5i / COCO-20i (default val)")
    evaluate.add_argument("--coco-split", choices=("interleaved", "contiguous"), default="interleaved",
                          help="COCO-20i folds: class c in fold (c-1) %% 4 (interleaved, HSNet) or 20 in a row")
    evaluate.add_argument("--splits", default=None,
                          help="folder of the benchmark's fold0.txt, ... ('<image>__<class id>' lines), e.g. an FSS "
                          "repository's data/splits/isaid/val (default: DATASET/splits/SPLIT; without them the label "
                          "maps are scanned)")
    evaluate.add_argument("--fold-count", type=_positive_int, default=None,
                          help="folder/manifest layouts without folds: split the classes into this many (default 1)")
    evaluate.add_argument("--out", default=None, help="folder for evaluation.json and evaluation.md, path or URL")
    evaluate.add_argument("--cache-size", type=_positive_int, default=64,
                          help="images whose features stay in memory (default 64; about 50 MB each with ViT-L at "
                          "1024 px)")
    add_backbone_option(evaluate)
    add_run_options(evaluate, only=QUALITY_RUN_OPTIONS)
    add_options(evaluate, InsidConfig, METHOD_TITLE)

    calibrate = add_command(commands, "calibrate", run_calibrate,
                            help="tune each concept's tau and merge_threshold on its reference shots, into a new "
                            "manifest (flow)")
    calibrate.add_argument("--references", required=True, help="reference manifest (YAML/JSON), path or URL")
    calibrate.add_argument("--out", required=True, help="calibrated manifest to write (YAML), path or URL")
    calibrate.add_argument("--extra", default=None,
                           help="labelled collection with held-out images of the concepts (matched by name)")
    calibrate.add_argument("--extra-layout", choices=LAYOUTS, default="auto", help="its layout (default: detected)")
    calibrate.add_argument("--concept", dest="concepts", nargs="+", default=None,
                           help="calibrate only these concepts (the others are copied unchanged)")
    calibrate.add_argument("--taus", type=_fraction, nargs="+", default=None,
                           help="tau values to try (default 0.5 0.6 0.7 0.8 0.85 0.9 0.95)")
    calibrate.add_argument("--merge-thresholds", type=_fraction, nargs="+", default=None,
                           help="merge_threshold values to try (default 0.1 0.2 0.3 0.4 0.5)")
    calibrate.add_argument("--bands", type=bands, default=None,
                           help="GeoTIFF references: bands to use as RGB, 1-based, as for `label` (default: the "
                           "first 3)")
    calibrate.add_argument("--radiometry", default=None,
                           help="GeoTIFF references: how values become 0..1, as for `label` (scene-percentile, "
                           "fixed:LOW,HIGH, scale:FACTOR[,OFFSET], none; default: scene-percentile)")
    add_backbone_option(calibrate)
    add_run_options(calibrate, only=QUALITY_RUN_OPTIONS)
    # --tau / --merge-threshold set the concept's starting point (always measured, kept on a tie)
    add_options(calibrate, InsidConfig, METHOD_TITLE)
    calibrate.add_argument("--scene-global-weights", dest="global_weights", type=_fraction, nargs="+", default=None,
                           help="global weights to try on held-out GeoTIFF scenes of --extra (default 0 0.25 0.5 "
                           "0.75); without such scenes the global weight is not searched")
    add_options(calibrate, SceneConfig, "held-out GeoTIFF/COG scenes (--extra): windowed as `label` will (give the "
                "same --scene-* options)", prefix="scene-", exclude=("radiometry",))


def run_evaluate(args: argparse.Namespace) -> int:
    """Runs the evaluate_insid3 Prefect flow: per fold, seeded episodes (a class of the fold, a query image holding
    it, --shots support images holding it), INSID3 on each, and the paper's metrics: class-wise IoU accumulated over
    the episodes (sum of intersections / sum of unions) -> mIoU over the fold's classes, and FB-IoU. Prints the
    Markdown report on stdout; --out also writes it with the JSON (every episode)."""
    run = run_options(args, only=QUALITY_RUN_OPTIONS)
    method = config_options(args, MethodOptions, InsidConfig())
    require_local(args.dataset, "--dataset")
    require_local(args.splits, "--splits")
    if any(f < 0 for f in args.folds or ()):
        raise InputError(f"--fold {args.folds}: folds are numbered from 0")
    result = run_flow(
        "flows.evaluation", "evaluate_insid3", dataset=args.dataset, backbone=args.backbone, layout=args.layout,
        folds=args.folds, shots=args.shots, episodes=args.episodes, seed=args.seed, split=args.split,
        coco_split=args.coco_split, fold_count=args.fold_count, splits=args.splits, method=method, out=args.out,
        cache_size=args.cache_size, run=run,
    )
    print(result["markdown"])
    print(f"mIoU {100 * result['miou']:.1f} %, FB-IoU {100 * result['fb_iou']:.1f} % over "
          f"{len(result['folds'])} fold(s)" + (f"; wrote {', '.join(result['files'])}" if result["files"] else ""),
          file=sys.stderr)
    return EXIT_OK


def run_calibrate(args: argparse.Namespace) -> int:
    """Runs the calibrate_references Prefect flow: per concept, every (tau, merge_threshold) of the grid is measured
    on the concept's own shots (leave-one-out: each shot in turn the target, the others the references; one shot:
    flipped and cropped views of it; with --extra: held-out labelled images of the concept), and the best is
    written as the concept's `config` in --out, with the IoU of the previous and of the chosen config beside it.
    Held-out GeoTIFF/COG scenes of a concept in --extra also get its global weight searched (--scene-global-weights)
    through the windowed path of `label`, written as the concept's `scene: {global_weight}`.
    `dinoseg label --references OUT` then uses it as is. Each image goes through the backbone once and each target
    is clustered once per tau."""
    run = run_options(args, only=QUALITY_RUN_OPTIONS)
    method = config_options(args, MethodOptions, InsidConfig())
    scene = config_options(args, SceneOptions, SceneConfig(), prefix="scene-", exclude=("radiometry",))
    require_local(args.references, "--references")
    require_local(args.extra, "--extra")
    bad = [w for w in args.global_weights or () if not 0.0 <= w <= 1.0]
    if bad:
        raise InputError(f"--scene-global-weights {bad}: a global weight must be in [0, 1]")
    if args.radiometry is not None:
        from dinoseg_core.io.radiometry import Radiometry

        if Radiometry.parse(args.radiometry).needs_collection:
            raise InputError(f"--radiometry {args.radiometry}: calibration reads the references only; give the "
                             "labelling run's recorded ranges as fixed:LOW,HIGH, or scene-percentile")
    if local_path(args.references) is not None:
        from dinoseg_core.io.manifest import load_manifest

        manifest = load_manifest(args.references, allow_reference_urls=run.allow_reference_urls or ())
        unknown = sorted(set(args.concepts or ()) - set(manifest.concepts))
        if unknown:
            raise InputError(f"--concept {unknown}: not in {args.references}; it defines {list(manifest.concepts)}")
    for flag, values, low, high in (("--taus", args.taus, 0.0, 1.0), ("--merge-thresholds", args.merge_thresholds,
                                                                       0.0, 1.0)):
        bad = [v for v in values or () if not low < v <= high] if flag == "--taus" else \
            [v for v in values or () if not low <= v < high]
        if bad:
            raise InputError(f"{flag} {bad}: tau must be in (0, 1], merge_threshold in [0, 1)")
    result = run_flow(
        "flows.evaluation", "calibrate_references", references=args.references, out=args.out, backbone=args.backbone,
        method=method, extra=args.extra, extra_layout=args.extra_layout, concepts=args.concepts, taus=args.taus,
        merge_thresholds=args.merge_thresholds, bands=args.bands, radiometry=args.radiometry, scene=scene,
        global_weights=args.global_weights, run=run,
    )
    print("| concept | mode | IoU before (tau, alpha) | IoU calibrated (tau, alpha) |\n|---|---|---|---|")
    for r in result["concepts"]:
        d, c = r["default"], r["chosen"]
        print(f"| {r['concept']} | {r['mode']} ({r['folds']}) | {d['iou']:.3f} ({d['tau']:g}, {d['merge_threshold']:g})"
              f" | {c['iou']:.3f} ({c['tau']:g}, {c['merge_threshold']:g}) |")
    for r in result["concepts"]:
        s = r["scene"]
        if s["searched"]:
            print(f"{r['concept']}: global_weight {s['chosen']['global_weight']:g} (IoU {s['chosen']['iou']:.3f} on "
                  f"{s['scenes']} scene(s), windowed; before {s['default']['iou']:.3f} with "
                  f"{s['default']['global_weight']:g})")
        elif args.global_weights or args.extra:
            print(f"{r['concept']}: global weight not searched: {s['reason']}", file=sys.stderr)
    print(f"wrote {result['files'][0]} (the search: {result['files'][1]})", file=sys.stderr)
    return EXIT_OK
