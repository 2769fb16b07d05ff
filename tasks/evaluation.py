"""Tasks of the quality flows (:mod:`flows.evaluation`): few-shot evaluation of INSID3 on a labelled collection, and
per-concept calibration of a reference manifest.

Each task resolves its inputs (URLs, specs), hands arrays to the method (:mod:`dinoseg_core.evaluate`,
:mod:`dinoseg_core.calibrate`) and returns plain dicts; the backbone is the process's (:mod:`tasks.runtime`).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from dinoseg_core.calibrate import (
    DEFAULT_GLOBAL_WEIGHTS,
    DEFAULT_MERGE_THRESHOLDS,
    DEFAULT_TAUS,
    LabelledScene,
    LabelledShot,
    calibrate_concept,
    calibrate_global_weight,
)
from dinoseg_core.config import InsidConfig, apply_options
from dinoseg_core.errors import InputError
from dinoseg_core.evaluate import evaluate_episodes, sample_episodes
from dinoseg_core.io import imageio, storage
from dinoseg_core.io.fss_datasets import FewShotCollection, open_collection
from dinoseg_core.io.imageio import RASTER_SUFFIXES
from dinoseg_core.io.manifest import load_manifest, parse_manifest
from tasks import runtime
from tasks.options import RunOptions, resolved_storage_options
from tasks.retry import STORAGE_RETRIES
from tasks.runtime import BackboneSpec


@task(name="open-labelled-collection", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def open_labelled_collection(url: str, layout: str = "auto", split: str = "val", folds: int | None = None,
                             coco_split: str = "interleaved", run: RunOptions | None = None,
                             splits: str | None = None) -> FewShotCollection:
    """Index a labelled collection (:func:`dinoseg_core.io.fss_datasets.open_collection`)."""
    return open_collection(url, layout, split=split, folds=folds, coco_split=coco_split,  # type: ignore[arg-type]
                           splits=splits, storage_options=resolved_storage_options(run or RunOptions()))


@task(name="evaluate-fold", cache_policy=NO_CACHE, task_run_name="evaluate-fold-{fold}")
def evaluate_fold(collection: FewShotCollection, fold: int, shots: int, episodes: int, seed: int,
                  backbone: BackboneSpec, method: dict[str, Any] | None, run: RunOptions, cache_size: int = 64
                  ) -> dict[str, Any]:
    """Seeded episodes of one fold (:func:`~dinoseg_core.evaluate.sample_episodes`) and the paper's metrics
    (:func:`~dinoseg_core.evaluate.evaluate_episodes`). Returns the summary with class names, per-episode rows and
    the settings."""
    classes = collection.fold_classes(fold)
    drawn = sample_episodes(collection.index, classes, shots, episodes, seed)
    config = apply_options(InsidConfig(), method)
    seg = runtime.segmenter(backbone, config, resolved_storage_options(run), cluster_backend=run.cluster_backend)
    logger = get_run_logger()
    if seg.backbone.is_random:
        logger.warning("RANDOM WEIGHTS: backbone %r is random; the scores say nothing about the method.",
                       backbone.spec)
    every = max(1, len(drawn) // 10)
    bar = tqdm(total=len(drawn), desc=f"evaluate fold {fold}", unit="episode", disable=None,  # terminal only
               dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)
        if done % every == 0 or done == total:
            logger.info("fold %d: %d/%d episodes", fold, done, total)

    so = resolved_storage_options(run)
    with bar, runtime.backbone_turn(seg.backbone.device, run.concurrency_limit):
        result = evaluate_episodes(seg, drawn, lambda key: collection.load(key, so), classes,
                                   config, cache_size=cache_size, progress=progress)
    result["classes"] = {str(c): {"name": collection.classes[c], **v} for c, v in result["classes"].items()}
    return {"fold": fold, "shots": shots, "seed": seed, "episodes_requested": episodes, **result}


def report_markdown(result: dict[str, Any]) -> str:
    """The evaluation as Markdown: the settings, one row per fold (mIoU, FB-IoU), one table of class IoUs per
    fold. Fractions shown as percentages with one decimal, as the papers."""
    lines = [f"# INSID3 evaluation: {result['dataset']}", "",
             f"layout {result['layout']}, {result['shots']}-shot, {result['episodes']} episodes per fold, seed "
             f"{result['seed']}, backbone `{result['backbone']}`, config `{json.dumps(result['config'])}`", "",
             "| fold | mIoU % | FB-IoU % | episodes | images extracted | seconds |", "|---|---|---|---|---|---|"]
    for f in result["folds"]:
        lines.append(f"| {f['fold']} | {100 * f['miou']:.1f} | {100 * f['fb_iou']:.1f} | {len(f['episodes'])} | "
                     f"{f['images_extracted']} | {f['seconds']:.1f} |")
    lines.append(f"| mean | {100 * result['miou']:.1f} | {100 * result['fb_iou']:.1f} | | | |")
    for f in result["folds"]:
        lines += ["", f"## fold {f['fold']}", "", "| class | IoU % | episodes |", "|---|---|---|"]
        lines += [f"| {c['name']} ({cid}) | {100 * c['iou']:.1f} | {c['episodes']} |"
                  for cid, c in f["classes"].items()]
    return "\n".join(lines) + "\n"


@task(name="write-evaluation", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def write_evaluation(result: dict[str, Any], out: str, run: RunOptions | None = None) -> list[str]:
    """``out/evaluation.json`` (everything, with per-episode rows) and ``out/evaluation.md``; their URLs."""
    storage_options = resolved_storage_options(run or RunOptions())
    json_url, md_url = storage.join(out, "evaluation.json"), storage.join(out, "evaluation.md")
    storage.write_bytes(json_url, json.dumps(result, indent=1).encode(), storage_options)
    storage.write_bytes(md_url, report_markdown(result).encode(), storage_options)
    return [json_url, md_url]


# ------------------------------------------------------------------------------------------------- calibration
def _read_shot(image_url: str, mask_url: str, storage_options: dict | None, bands: list[int] | None = None,
               radiometry: str | None = None) -> tuple[Any, Any]:
    """(image, mask) of one reference; GeoTIFF/COG references through the raster reader with the bands and the
    radiometry the labelling run will use (default: the first 3 bands, each scene's own stretch)."""
    if image_url.lower().endswith(RASTER_SUFFIXES):
        from dinoseg_core.io.radiometry import Radiometry
        from dinoseg_core.io.raster import read_reference

        return read_reference(image_url, mask_url, bands=bands, storage_options=storage_options,
                              radiometry=Radiometry.parse(radiometry))
    return imageio.read_image(image_url, storage_options), imageio.read_mask(mask_url, storage_options)


#: Held-out images per concept that calibration reads from ``extra`` (the first, in sorted order): each is held in
#: memory with its features for the whole search.
EXTRA_LIMIT = 32


@task(name="calibrate-concept", cache_policy=NO_CACHE, task_run_name="calibrate-{concept}")
def calibrate_one(references: str, concept: str, backbone: BackboneSpec, method: dict[str, Any] | None,
                  extra: FewShotCollection | None, taus: list[float] | None, merge_thresholds: list[float] | None,
                  run: RunOptions, bands: list[int] | None = None, radiometry: str | None = None,
                  scene: dict[str, Any] | None = None, global_weights: list[float] | None = None) -> dict[str, Any]:
    """Calibrate one concept of the manifest (:func:`~dinoseg_core.calibrate.calibrate_concept`): its shots read
    once, held-out images of the same concept from ``extra`` when it has them (else leave-one-out, or
    self-consistency for one shot). Held-out GeoTIFF/COG scenes of the concept also get the global weight searched
    (:func:`~dinoseg_core.calibrate.calibrate_global_weight`, grid ``global_weights``, default
    :data:`~dinoseg_core.calibrate.DEFAULT_GLOBAL_WEIGHTS`) at the chosen tau / merge_threshold, each read window by
    window with ``bands`` and ``radiometry`` and the concept's scene config (``scene``: the run's given fields, which
    win over the manifest's). Returns :meth:`Calibration.to_dict` plus the concept, the base config and ``scene``
    (:meth:`GlobalWeightCalibration.to_dict`, or ``{"searched": False, "reason": ...}``)."""
    so = resolved_storage_options(run)
    manifest = load_manifest(references, so, run.allow_reference_urls or ())
    spec = manifest.concept(concept)
    base = apply_options(manifest.config_for(concept), method)
    shots = [LabelledShot(*_read_shot(p.image_url, p.mask_url, so, bands, radiometry), storage.display_url(p.image_url))
             for p in spec.references]
    held_out: list[LabelledShot] = []
    scene_urls: list[tuple[str, Any]] = []  # (image URL, ground truth) of the held-out GeoTIFF/COG scenes
    if extra is not None and concept in extra.classes.values():
        class_id = extra.class_id(concept)
        for key in extra.index.get(class_id, ())[:EXTRA_LIMIT]:
            url = extra.images[key].image_url
            if url.lower().endswith(RASTER_SUFFIXES):
                image, truth = _read_held_out_scene(extra, key, class_id, so, bands, radiometry)
                scene_urls.append((url, truth))
            else:
                sample = extra.load(key, so)
                image, truth = sample.image, sample.mask(class_id)
            held_out.append(LabelledShot(image, truth, storage.display_url(url)))
    seg = runtime.segmenter(backbone, base, so, cluster_backend=run.cluster_backend)
    with runtime.backbone_turn(seg.backbone.device, run.concurrency_limit):
        result = calibrate_concept(seg, shots, base=base, taus=taus or DEFAULT_TAUS,
                                   merge_thresholds=merge_thresholds or DEFAULT_MERGE_THRESHOLDS, extra=held_out)
        scene_result = _calibrate_scenes(seg, shots, scene_urls, base.replace(
            tau=result.chosen.tau, merge_threshold=result.chosen.merge_threshold),
            apply_options(manifest.scene_for(concept), scene), global_weights, bands, radiometry, so)
    logger = get_run_logger()
    logger.info("%s (%s, %d folds): IoU %.3f with tau %g, merge_threshold %g; default %.3f", concept,
                result.mode, result.folds, result.chosen.iou, result.chosen.tau, result.chosen.merge_threshold,
                result.default.iou)
    if scene_result["searched"]:
        logger.info("%s (%d scene(s)): IoU %.3f with global_weight %g; default %.3f", concept,
                    scene_result["scenes"], scene_result["chosen"]["iou"], scene_result["chosen"]["global_weight"],
                    scene_result["default"]["iou"])
    else:
        logger.info("%s: global weight not searched (%s)", concept, scene_result["reason"])
    return {"concept": concept, "base": {"tau": base.tau, "merge_threshold": base.merge_threshold},
            "random_weights": seg.backbone.is_random, **result.to_dict(), "scene": scene_result}


def _read_held_out_scene(extra: FewShotCollection, key: str, class_id: int, storage_options: dict | None,
                         bands: list[int] | None, radiometry: str | None) -> tuple[Any, Any]:
    """(image, ground truth) of a held-out GeoTIFF/COG scene, the image read as `dinoseg label` reads scenes (the
    run's bands and radiometry), the ground truth from the collection's mask or label map."""
    from dinoseg_core.io.fss_datasets import read_label_map
    from dinoseg_core.io.radiometry import Radiometry
    from dinoseg_core.io.raster import open_raster, raster_reader

    entry = extra.images[key]
    source = open_raster(entry.image_url, bands, storage_options, radiometry=Radiometry.parse(radiometry))
    with raster_reader(source) as reader:
        image, _ = reader.read(None)
    if entry.label_url is not None:
        truth = read_label_map(entry.label_url, storage_options) == class_id
        url = entry.label_url
    else:
        url = entry.mask_urls[class_id]
        truth = imageio.read_mask(url, storage_options)
    if truth.shape != image.shape[:2]:
        raise InputError(f"{storage.display_url(url)} is {truth.shape[1]}x{truth.shape[0]}, the scene "
                         f"{storage.display_url(entry.image_url)} {image.shape[1]}x{image.shape[0]}; a ground-truth "
                         "mask must match its scene")
    return image, truth


def _calibrate_scenes(seg, shots: list[LabelledShot], scenes: list[tuple[str, Any]], config: InsidConfig,
                      scene_config, weights: list[float] | None, bands: list[int] | None, radiometry: str | None,
                      storage_options: dict | None) -> dict[str, Any]:
    """The global-weight search on the held-out scenes, each read as `dinoseg label` reads it (window by window,
    the run's bands and radiometry); ``{"searched": False, "reason"}`` without scenes."""
    if not scenes:
        return {"searched": False, "reason": "no GeoTIFF/COG scene of the concept among the held-out (--extra) images"}
    from contextlib import ExitStack

    from dinoseg_core.io.radiometry import Radiometry
    from dinoseg_core.io.raster import open_raster, raster_reader

    with ExitStack() as stack:
        labelled = []
        for url, truth in scenes:
            source = open_raster(url, bands, storage_options, radiometry=Radiometry.parse(radiometry))
            reader = stack.enter_context(raster_reader(source))
            labelled.append(LabelledScene(reader.read, source.shape, truth, source.display_url))
        found = calibrate_global_weight(seg, shots, labelled, insid_config=config, scene_config=scene_config,
                                        weights=weights or DEFAULT_GLOBAL_WEIGHTS)
    return found.to_dict()


def _relative_to(manifest_url: str, out_url: str) -> bool:
    """Whether the output manifest sits in the input's folder (its relative references then stay valid)."""
    return posixpath.dirname(manifest_url.rstrip("/")) == posixpath.dirname(out_url.rstrip("/"))


def calibrated_manifest_text(references: str, raw: dict[str, Any], results: list[dict[str, Any]],
                             method: dict[str, Any] | None, out: str, backbone: str,
                             allow_reference_urls: list[str] | tuple[str, ...] = ()) -> str:
    """The calibrated manifest as YAML: the input's concepts and references (relative references kept when ``out``
    is beside the input, else made absolute), each concept's ``config`` updated with its chosen overrides, a comment
    above each concept with the measured IoU of the default and of the chosen config, and this run's method
    options in the top-level ``config`` (so ``dinoseg label --references OUT`` runs what was measured)."""
    manifest = parse_manifest(raw, references, allow_reference_urls)
    keep_relative = _relative_to(references, out)
    raw_concepts = raw["concepts"]
    if isinstance(raw_concepts, list):
        raw_concepts = {entry["name"]: {k: v for k, v in entry.items() if k != "name"} for entry in raw_concepts}
    top = {"version": raw.get("version", 1)}
    if raw.get("description"):
        top["description"] = raw["description"]
    config = {**(raw.get("config") or {}), **(method or {})}
    if config:
        top["config"] = config
    by_name = {r["concept"]: r for r in results}
    lines = [f"# calibrated by `dinoseg calibrate` from {storage.display_url(references)} (backbone {backbone})",
             yaml.safe_dump(top, sort_keys=False).rstrip(), "concepts:"]
    for name, spec in manifest.concepts.items():
        entry = dict(raw_concepts[name])
        if not keep_relative:
            entry["references"] = [{"image": p.image_url, "mask": p.mask_url} for p in spec.references]
        result = by_name.get(name)
        if result is not None:
            # the run's options won over the concept's own during calibration: they win in the output too; then
            # tau / merge_threshold are written where what label would read differs from what was chosen
            own = dict(entry.get("config") or {})
            own.update({k: v for k, v in (method or {}).items() if k in own})
            effective = InsidConfig().replace(**{**config, **own})
            for field in ("tau", "merge_threshold"):
                if getattr(effective, field) != result["chosen"][field]:
                    own[field] = result["chosen"][field]
            entry["config"] = own
            if not entry["config"]:
                entry.pop("config")
            d, c = result["default"], result["chosen"]
            lines.append(f"  # {name}: {result['mode']}, {result['folds']} fold(s): IoU {c['iou']:.3f} with tau "
                         f"{c['tau']:g}, merge_threshold {c['merge_threshold']:g}; before: {d['iou']:.3f} with tau "
                         f"{d['tau']:g}, merge_threshold {d['merge_threshold']:g}")
            scene = result.get("scene") or {}
            if scene.get("searched"):
                sd, sc = scene["default"], scene["chosen"]
                entry["scene"] = {**(entry.get("scene") or {}), "global_weight": sc["global_weight"]}
                lines.append(f"  # {name} on {scene['scenes']} scene(s), windowed: IoU {sc['iou']:.3f} with "
                             f"global_weight {sc['global_weight']:g}; before: {sd['iou']:.3f} with global_weight "
                             f"{sd['global_weight']:g}")
        block = yaml.safe_dump({name: entry}, sort_keys=False)
        lines += ["  " + line for line in block.rstrip().splitlines()]
    text = "\n".join(lines) + "\n"
    parse_manifest(text.encode(), out, allow_reference_urls)  # what `dinoseg label` will read: refuse to write anything it would refuse
    return text


@task(name="write-calibrated-manifest", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def write_calibrated_manifest(references: str, out: str, results: list[dict[str, Any]], method: dict | None,
                              backbone: str, run: RunOptions | None = None) -> list[str]:
    """Write ``out`` (:func:`calibrated_manifest_text`) and the search beside it as ``<out stem>.calibration.json``
    (every trial of every concept). Returns both URLs."""
    if storage.display_url(out) == storage.display_url(references):
        raise InputError(f"--out {storage.display_url(out)} is the input manifest; write the calibrated one beside it")
    storage_options = resolved_storage_options(run or RunOptions())
    raw = yaml.safe_load(storage.read_bytes(references, storage_options).decode("utf-8-sig"))
    text = calibrated_manifest_text(references, raw, results, method, out, backbone,
                                    (run.allow_reference_urls if run else None) or ())
    report = out.rsplit(".", 1)[0] + ".calibration.json"
    storage.write_bytes(report, json.dumps({"references": references, "backbone": backbone, "method": method or {},
                                            "concepts": results}, indent=1).encode(), storage_options)
    storage.write_bytes(out, text.encode(), storage_options)
    return [out, report]
