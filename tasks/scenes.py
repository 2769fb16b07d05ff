"""Task: label one large remote-sensing scene (GeoTIFF/COG) for every concept, window by window.

The scene is read in windows (never whole), segmented with whole-scene context and stitched without seams
(:func:`dinoseg_core.geo.segment_scene`); each mask is streamed chunk by chunk into a new archive version that
carries the scene's CRS and transform, and is published atomically. Memory stays bounded by the window size.
"""

from __future__ import annotations

import hashlib
import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from dinoseg_core.io import storage
from dinoseg_core.io.archive import MaskArchive, config_digest, image_key
from dinoseg_core.errors import ObjectNotFoundError, StorageError
from dinoseg_core.geo import SceneConfig, geo_attrs, segment_scene
from dinoseg_core.io.raster import open_raster
from dinoseg_core.io.maskwriter import ZarrMaskWriter
from tasks import runtime
from tasks.labelling import PERMANENT
from tasks.retry import STORAGE_RETRIES
from tasks.settings import ImageOutcome, LabelSettings, PreparedConcept

#: Bytes per read when hashing a scene (bounded memory for scenes of many GB).
HASH_BLOCK = 16 * 2**20


def scene_sha256(url: str, storage_options: dict | None) -> str:
    """sha256 of an object read in blocks."""
    fs, path = storage.url_to_fs(url, storage_options)
    digest = hashlib.sha256()
    try:
        with fs.open(path, "rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
    except FileNotFoundError as exc:
        raise ObjectNotFoundError(f"Cannot read {storage.display_url(url)}: no such object") from exc
    return digest.hexdigest()


def scene_config_of(concept: PreparedConcept, scene: SceneConfig, bands: tuple[int, ...] | None) -> dict:
    """What a scene mask depends on besides its source: the method config, the windowing, the bands."""
    return {**concept.config.to_dict(), "scene": scene.to_dict(), "bands": list(bands) if bands else None}


@task(name="label-scene", cache_policy=NO_CACHE, task_run_name="scene-{url}", **STORAGE_RETRIES)
def label_scene(
    url: str,
    stamp: str | None,
    concepts: list[PreparedConcept],
    settings: LabelSettings,
    scene: SceneConfig,
) -> ImageOutcome:
    """Label every concept on one scene; a bad scene (corrupt, a band out of range) is a failed outcome."""
    started = time.perf_counter()
    so, bands = settings.storage_options, settings.bands
    key = image_key(url, settings.input_prefix)
    archive = MaskArchive.open(settings.archive_url, so, mode="a")
    model = runtime.backbone(settings.backbone, so)
    digests = {c.name: config_digest(scene_config_of(c, scene, bands)) for c in concepts}

    def outdated(sha: str | None) -> list[PreparedConcept]:
        if settings.force:
            return list(concepts)
        todo = []
        for concept in concepts:
            record = archive.mask_record(concept.name, key)
            same = record is not None and (
                (record.get("source_sha256") == sha) if sha else (record.get("source_stamp") == stamp)
            ) and (record.get("backbone_fingerprint"), record.get("config_digest"), record.get("reference_set_hash")) == (
                model.fingerprint, digests[concept.name], concept.reference_set_hash)
            if not same:
                todo.append(concept)
        return todo

    try:
        if stamp is not None and not outdated(None):
            return ImageOutcome(url, "skipped", seconds=time.perf_counter() - started)
        sha = scene_sha256(url, so)
        todo = outdated(sha)
        if not todo:
            return ImageOutcome(url, "skipped", seconds=time.perf_counter() - started)
        source = open_raster(url, bands, so)
        cache = settings.cache()
        for concept in todo:
            seg = runtime.segmenter(settings.backbone, concept.config, so, cache)
            refs = runtime.reference_set(concept.reference_key, cache, model.device)
            if refs is None:
                raise StorageError(f"reference set of concept {concept.name!r} missing from {cache.url}")

            def fill(group, concept=concept, seg=seg, refs=refs):
                with ZarrMaskWriter.create(group, source, attributes={"long_name": f"{concept.name} mask"}) as writer:
                    result = segment_scene(seg, refs, source, writer, config=scene, insid_config=concept.config)
                extra = {"scene_windows": result.windows, "scene_timings": result.timings,
                         "scene_foreground_pixels": result.foreground_pixels}
                return {**extra, **(geo_attrs(source) if source.georeferenced else {})}

            archive.write_streamed_mask(concept.name, key, {
                "source_uri": url, "source_sha256": sha, "source_stamp": stamp or storage.stat_stamp(url, so),
                "backbone": model.spec, "backbone_fingerprint": model.fingerprint, "backbone_random": model.is_random,
                "config": scene_config_of(concept, scene, bands), "reference_set_hash": concept.reference_set_hash,
                "raster": source.to_dict(),
            }, fill)
        return ImageOutcome(url, "labelled", tuple(c.name for c in todo), time.perf_counter() - started)
    except PERMANENT as exc:
        return ImageOutcome(url, "failed", seconds=time.perf_counter() - started, reason=str(exc))
