"""Tasks: find the images of a collection, and label a batch of them for every concept.

``label_batch`` is the unit of work a worker runs: read (skipping what is up to date), extract each target's
features once per feature configuration (one backbone pass for the batch), segment every concept from those
features, write each mask with its provenance. A bad image fails alone; a transient storage error retries the
batch, and what was already written is skipped on the retry.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

from prefect import task
from prefect.cache_policies import NO_CACHE

from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive, config_digest, image_key
from dinoseg_core.errors import InputError, ObjectNotFoundError, StorageError
from tasks import runtime
from tasks.retry import STORAGE_RETRIES
from tasks.settings import ImageOutcome, LabelSettings, PreparedConcept

log = logging.getLogger("dinoseg.tasks")

#: Errors that belong to one image and will not go away on a retry.
PERMANENT = (InputError, ObjectNotFoundError)


@task(name="list-images", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def list_images(images: str | Sequence[str], storage_options: dict | None = None) -> list[tuple[str, str | None]]:
    """(url, stamp) of every image: a glob pattern is listed (stamps come with the listing, no extra request);
    an explicit list is taken as is (stamp None: the image is read to be hashed)."""
    if isinstance(images, str):
        if not any(ch in images for ch in "*?["):
            raise InputError(f"images={images!r} is not a glob pattern; give e.g. 's3://bucket/tiles/**/*.png'")
        found = storage.glob_stamped(images, storage_options)
        if not found:
            raise InputError(f"images={images!r} matches no object")
        return found
    return [(url, None) for url in dict.fromkeys(images)]


def _archive(settings: LabelSettings) -> MaskArchive:
    return MaskArchive.open(settings.archive_url, settings.storage_options, mode="a")


def _outdated(archive, key, concepts, fingerprint, *, sha=None, stamp=None, force=False):
    """Concepts whose mask must be (re)written. Before the image is read, its listing stamp stands in for
    the sha256 (an unchanged stamp means unchanged bytes); once read, the sha256 decides."""
    if force:
        return list(concepts)
    todo = []
    for concept in concepts:
        record = archive.mask_record(concept.name, key)
        if record is None:
            todo.append(concept)
            continue
        same_source = record.get("source_sha256") == sha if sha is not None else record.get("source_stamp") == stamp
        same_method = (record.get("backbone_fingerprint"), record.get("config_digest"), record.get("reference_set_hash")) == (
            fingerprint, config_digest(concept.config), concept.reference_set_hash
        )
        if not (same_source and same_method):
            todo.append(concept)
    return todo


@task(name="label-batch", cache_policy=NO_CACHE, task_run_name="label-{items[0][0]}+", **STORAGE_RETRIES)
def label_batch(
    items: list[tuple[str, str | None]], concepts: list[PreparedConcept], settings: LabelSettings
) -> list[ImageOutcome]:
    """Label ``items`` ((url, stamp) pairs) for every concept; returns one outcome per image."""
    so = settings.storage_options
    archive = _archive(settings)
    cache = settings.cache()
    segmenters = {c.name: runtime.segmenter(settings.backbone, c.config, so, cache) for c in concepts}
    model = next(iter(segmenters.values())).backbone
    outcomes: dict[str, ImageOutcome] = {}
    pending = []  # (url, key, sha, stamp, image, todo, started)
    for url, stamp in items:
        started = time.perf_counter()
        key = image_key(url, settings.input_prefix)
        try:
            if stamp is not None and not _outdated(archive, key, concepts, model.fingerprint, stamp=stamp,
                                                   force=settings.force):
                outcomes[url] = ImageOutcome(url, "skipped", seconds=time.perf_counter() - started)
                continue
            data = storage.read_bytes(url, so)
            sha = hashlib.sha256(data).hexdigest()
            todo = _outdated(archive, key, concepts, model.fingerprint, sha=sha, force=settings.force)
            if not todo:
                outcomes[url] = ImageOutcome(url, "skipped", seconds=time.perf_counter() - started)
                continue
            stamp = stamp or storage.stat_stamp(url, so)
            pending.append((url, key, sha, stamp, imageio.decode_image(data, url), todo, started))
        except PERMANENT as exc:
            outcomes[url] = ImageOutcome(url, "failed", seconds=time.perf_counter() - started, reason=str(exc))

    # one backbone pass per batch and feature configuration; every concept of that configuration reuses it
    failed: set[str] = set()
    written: dict[str, list[str]] = {}
    # the backbone work holds a slot of the run's concurrency limit, if any (one batch per slot)
    with runtime.backbone_slot(settings.concurrency_limit if pending else None):
        for fkey in dict.fromkeys(runtime.feature_key(c.config) for c in concepts):
            group = [p for p in pending
                     if p[0] not in failed and any(runtime.feature_key(c.config) == fkey for c in p[5])]
            if not group:
                continue
            seg = next(segmenters[c.name] for c in concepts if runtime.feature_key(c.config) == fkey)
            try:
                features = seg.extract_targets([p[4] for p in group], [p[0] for p in group])
            except PERMANENT:
                features = [None] * len(group)  # one bad image: extract one by one to isolate it
            for (url, key, sha, stamp, image, todo, started), target in zip(group, features):
                try:
                    target = target or seg.extract_target(image, url)
                    for concept in (c for c in todo if runtime.feature_key(c.config) == fkey):
                        refs = runtime.reference_set(concept.reference_key, cache, model.device)
                        if refs is None:
                            raise StorageError(f"reference set of concept {concept.name!r} missing from {cache.url}")
                        result = segmenters[concept.name].segment_features(refs, target, concept.config)
                        archive.write_mask(
                            concept.name, key, result.mask,
                            attrs=_provenance(url, sha, stamp, model, concept, result.timings),
                            similarity=result.similarity if settings.save_similarity else None,
                        )
                        written.setdefault(url, []).append(concept.name)
                except PERMANENT as exc:
                    failed.add(url)
                    outcomes[url] = ImageOutcome(url, "failed", seconds=time.perf_counter() - started, reason=str(exc))
    for url, key, sha, stamp, image, todo, started in pending:
        if url not in failed:
            outcomes[url] = ImageOutcome(url, "labelled", tuple(written.get(url, ())), time.perf_counter() - started)
    return [outcomes[url] for url, _ in items]


def _provenance(url, sha, stamp, model, concept, timings) -> dict:
    return {
        "source_uri": url,
        "source_sha256": sha,
        "source_stamp": stamp,
        "backbone": model.spec,
        "backbone_fingerprint": model.fingerprint,
        "backbone_random": model.is_random,
        "config": concept.config.to_dict(),
        "reference_set_hash": concept.reference_set_hash,
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
