"""Quality flows: measure INSID3 on a labelled collection, and tune a reference manifest's thresholds per concept.

- ``evaluate_insid3``: seeded few-shot episodes per fold and the paper's metrics (class-wise IoU accumulated over
  episodes -> mIoU, FB-IoU), as a table artifact (``dinoseg-evaluate-insid3-summary``), JSON and Markdown files;
- ``calibrate_references``: per concept a search over tau x merge_threshold measured on its own shots
  (leave-one-out, self-consistency, or held-out labelled images), written as a manifest with per-concept
  ``config`` overrides (and, measured on held-out GeoTIFF scenes, the concept's ``scene.global_weight``); table
  artifacts of the choice (``-summary``) and of the whole search (``-search``).

The bodies are loops over tasks (:mod:`tasks.evaluation`); results are plain dicts (JSON).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from pydantic import Field
from tqdm import tqdm

from dinoseg_core.config import DEFAULT_BACKBONE, InsidConfig, MethodOptions, SceneConfig, SceneOptions, apply_options
from dinoseg_core.errors import InputError
from flows.engine import RESULT_SERIALIZER, artifact_key
from tasks.evaluation import (
    calibrate_one,
    evaluate_fold,
    open_labelled_collection,
    report_markdown,
    write_calibrated_manifest,
    write_evaluation,
)
from tasks.options import RunOptions, resolved_storage_options, run_options
from tasks.runtime import BackboneSpec


@flow(name="evaluate-insid3", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def evaluate_insid3(
    dataset: str,
    backbone: str = DEFAULT_BACKBONE,
    layout: Literal["auto", "folder", "manifest", "isaid", "coco20i"] = "auto",
    folds: list[int] | None = None,
    shots: int = Field(default=1, ge=1),
    episodes: int = Field(default=1000, ge=1),
    seed: int = 0,
    split: str = "val",
    coco_split: Literal["interleaved", "contiguous"] = "interleaved",
    fold_count: int | None = Field(default=None, ge=1),
    splits: str | None = None,
    method: MethodOptions | None = None,
    out: str | None = None,
    cache_size: int = Field(default=64, ge=1),
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """Few-shot evaluation of INSID3 on a labelled collection, fold by fold.

    Args:
        dataset: the collection (folder, manifest file, iSAID-5i or COCO-20i root; any fsspec URL).
        layout: its layout (``auto`` detects it; :mod:`dinoseg_core.io.fss_datasets`).
        folds: which folds (0-based); default all.
        shots, episodes, seed: per fold, ``episodes`` episodes of ``shots`` supports drawn with ``seed``.
        split, coco_split: benchmark split and COCO-20i's fold rule; ``fold_count``: folds of the folder layout.
        splits: the folder of the benchmark's ``fold<i>.txt`` files (default ``<dataset>/splits/<split>``).
        method: INSID3 options (unset fields keep the paper's defaults).
        out: folder for ``evaluation.json`` and ``evaluation.md`` (nothing written when None).
        cache_size: images whose features stay in memory (each is extracted once while cached).
        run: device, storage options, cluster backend (:class:`tasks.options.RunOptions`).
    Returns:
        ``{"miou", "fb_iou"}`` (means over the folds), ``"folds"`` (one summary each), the settings, ``"files"``.
    """
    run = run_options(run)
    method_given = method.model_dump(exclude_none=True) if method is not None else {}
    config = apply_options(InsidConfig(), method_given)  # a bad option fails before any work
    collection = open_labelled_collection(dataset, layout, split, fold_count, coco_split, run, splits)
    chosen = folds if folds is not None else list(range(len(collection.folds)))
    for fold in chosen:
        collection.fold_classes(fold)
    spec = BackboneSpec(backbone, run.device, run.dtype, run.compile)
    results = [evaluate_fold(collection, fold, shots, episodes, seed, spec, method_given, run, cache_size)
               for fold in chosen]
    result = {
        "dataset": dataset, "layout": collection.layout, "backbone": backbone, "config": config.to_dict(),
        "shots": shots, "episodes": episodes, "seed": seed,
        "miou": sum(r["miou"] for r in results) / len(results),
        "fb_iou": sum(r["fb_iou"] for r in results) / len(results),
        "folds": results,
    }
    result["files"] = write_evaluation(result, out, run) if out else []
    rows = [{"fold": str(r["fold"]), "mIoU %": round(100 * r["miou"], 2), "FB-IoU %": round(100 * r["fb_iou"], 2),
             "episodes": len(r["episodes"]), "images extracted": r["images_extracted"]} for r in results]
    rows.append({"fold": "mean", "mIoU %": round(100 * result["miou"], 2), "FB-IoU %": round(100 * result["fb_iou"], 2),
                 "episodes": sum(len(r["episodes"]) for r in results),
                 "images extracted": sum(r["images_extracted"] for r in results)})
    create_table_artifact(rows, key=artifact_key("summary"),
                          description=f"INSID3 {shots}-shot on {dataset} ({collection.layout})")
    get_run_logger().info("mIoU %.1f %%, FB-IoU %.1f %% over %d fold(s)", 100 * result["miou"],
                          100 * result["fb_iou"], len(results))
    result["markdown"] = report_markdown(result)
    return result


@flow(name="calibrate-references", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def calibrate_references(
    references: str,
    out: str,
    backbone: str = DEFAULT_BACKBONE,
    method: MethodOptions | None = None,
    extra: str | None = None,
    extra_layout: Literal["auto", "folder", "manifest", "isaid", "coco20i"] = "auto",
    concepts: list[str] | None = None,
    taus: list[float] | None = None,
    merge_thresholds: list[float] | None = None,
    bands: list[int] | None = None,
    radiometry: str | None = None,
    scene: SceneOptions | None = None,
    global_weights: list[float] | None = None,
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """Tune tau and merge_threshold per concept of a reference manifest, and write the calibrated manifest.

    Args:
        references: the reference manifest (YAML/JSON).
        out: the calibrated manifest to write (beside it: ``<stem>.calibration.json`` with every trial).
        method: INSID3 options of the run (e.g. ``image_size``); written into the calibrated manifest's ``config``.
        extra: a labelled collection with held-out images of the concepts (matched by name); concepts it lacks are
            calibrated on their own shots.
        concepts: which concepts (default all; the others are copied unchanged).
        taus, merge_thresholds: the grid (default :data:`dinoseg_core.calibrate.DEFAULT_TAUS` and
            :data:`~dinoseg_core.calibrate.DEFAULT_MERGE_THRESHOLDS`).
        bands, radiometry: how GeoTIFF/COG references are read (give what the labelling run uses; a collection
            stretch needs the collection: give ``fixed:LOW,HIGH`` with its recorded ranges instead).
        scene: scene options of the labelling run (windowing, context size; win over a concept's ``scene``), used
            on held-out GeoTIFF scenes of ``extra``.
        global_weights: the global weights tried on those scenes (default
            :data:`dinoseg_core.calibrate.DEFAULT_GLOBAL_WEIGHTS`); without scenes of a concept, its global weight
            is not searched (its result says why).
    Returns:
        ``{"concepts": [one calibration each], "files": [out, report]}``.
    """
    from dinoseg_core.io.manifest import load_manifest

    run = run_options(run)
    method_given = method.model_dump(exclude_none=True) if method is not None else {}
    manifest = load_manifest(references, resolved_storage_options(run), run.allow_reference_urls or ())  # a bad manifest fails before any work
    from dinoseg_core.io.radiometry import Radiometry

    if Radiometry.parse(radiometry).needs_collection:
        raise InputError(f"radiometry={radiometry!r}: calibration reads only the references, not the collection the "
                         "stretch is computed from; give the labelling run's ranges as fixed:LOW,HIGH (the run log "
                         "records them) or use scene-percentile")
    scene_given = scene.model_dump(exclude_none=True) if scene is not None else {}
    apply_options(SceneConfig(), scene_given)
    for weight in global_weights or ():
        SceneConfig(global_weight=weight)  # out of [0, 1] fails before any work, naming the field
    names = concepts or list(manifest.concepts)
    for name in names:
        apply_options(manifest.config_for(name), method_given)
    collection = open_labelled_collection(extra, extra_layout, run=run) if extra else None
    spec = BackboneSpec(backbone, run.device, run.dtype, run.compile)
    results = []
    with tqdm(names, desc="calibrate", unit="concept", disable=None, dynamic_ncols=True) as bar:  # terminal only
        for name in bar:
            bar.set_postfix_str(name)
            results.append(calibrate_one(manifest.url, name, spec, method_given, collection, taus,
                                         merge_thresholds, run, bands, radiometry, scene_given, global_weights))
    files = write_calibrated_manifest(manifest.url, out, results, method_given, backbone, run)
    create_table_artifact(
        [{"concept": r["concept"], "mode": r["mode"], "folds": r["folds"],
          "default IoU": round(r["default"]["iou"], 4), "chosen tau": r["chosen"]["tau"],
          "chosen merge_threshold": r["chosen"]["merge_threshold"], "chosen IoU": round(r["chosen"]["iou"], 4),
          "scenes": r["scene"]["scenes"] if r["scene"]["searched"] else 0,
          "chosen global_weight": r["scene"]["chosen"]["global_weight"] if r["scene"]["searched"] else "not searched",
          "scene IoU": round(r["scene"]["chosen"]["iou"], 4) if r["scene"]["searched"] else ""}
         for r in results],
        key=artifact_key("summary"), description=f"calibrated {len(results)} concept(s) -> {out}")
    create_table_artifact(
        [{"concept": r["concept"], "tau": t["tau"], "merge_threshold": t["merge_threshold"],
          "IoU": round(t["iou"], 4),
          "": "chosen" if (t["tau"], t["merge_threshold"]) == (r["chosen"]["tau"], r["chosen"]["merge_threshold"])
          else ("default" if (t["tau"], t["merge_threshold"]) == (r["default"]["tau"], r["default"]["merge_threshold"])
                else "")}
         for r in results for t in r["trials"]],
        key=artifact_key("search"), description="calibration search: IoU of every (tau, merge_threshold)")
    return {"concepts": results, "files": files}
