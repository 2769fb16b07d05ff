"""The labelling engine's unit of work: ``label-batch``, for every labeller and every kind of item.

A job is (items of a source) x (a labeller) -> archive records. For each item the batch decides, with the one
freshness rule (:func:`tasks.freshness.relabel_reason`), which concepts are out of date: first by its listing
stamp (no read at all when everything is up to date), then by the sha256 of its bytes. Out-of-date tiles are
decoded and handed to the labeller together (one backbone pass for the batch); a scene is handed over alone and
read window by window. A bad item fails alone, with its reason; a transient storage error retries the batch, and
what was already written is skipped on the retry.

A labeller (:class:`Labeller`) is a small picklable value that knows its concepts, what each concept's masks depend
on (:class:`~tasks.freshness.MethodStamp`) and how to segment and write them; its heavy objects (models, embedded
references) live in the worker process (:mod:`tasks.runtime`). Two exist: an INSID3 concept set
(:class:`tasks.concepts.ConceptSet`) and a text class set (:class:`tasks.text.ClassSet`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from dinoseg_core.errors import InputError, ObjectNotFoundError
from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive, image_key
from tasks.freshness import MethodStamp, relabel_reason
from tasks.options import RunOptions
from tasks.retry import STORAGE_RETRIES
from tasks.sources import ItemKind, WorkItem

#: Errors that belong to one item and will not go away on a retry.
PERMANENT = (InputError, ObjectNotFoundError)
#: Reader threads per batch (freshness checks, reads, hashes, decodes: I/O-bound, memory bounded by the batch).
IO_THREADS = 8
#: Bytes per read when hashing a scene (bounded memory for scenes of many GB).
HASH_BLOCK = 16 * 2**20


@dataclass(frozen=True)
class LabelJob:
    """What every batch of a run shares besides the labeller: the archive, the collection's prefix (image keys
    are relative to it) and the run options."""

    archive_url: str
    input_prefix: str | None
    run: RunOptions


@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one item: ``labelled`` (some concept written), ``skipped`` (all up to date) or
    ``failed`` (with the reason)."""

    uri: str
    status: str
    concepts: tuple[str, ...] = ()
    seconds: float = 0.0
    reason: str | None = None


@dataclass
class Pending:
    """An item with concepts to (re)write: its archive key, source identity, the concepts to write, and for a
    tile the decoded image (float32 (H, W, 3) in [0, 1]; None for a scene, which is read window by window)."""

    item: WorkItem
    key: str
    sha256: str
    stamp: str
    todo: tuple[str, ...]
    image: np.ndarray | None
    started: float
    read_seconds: float = 0.0

    @property
    def url(self) -> str:
        return self.item.url

    def source_attrs(self) -> dict[str, Any]:
        """The provenance of the source, common to every mask written for this item."""
        return {"source_uri": self.url, "source_sha256": self.sha256, "source_stamp": self.stamp}


class Labeller(Protocol):
    """What the engine needs of a labeller. ``scenes``: whether scene items go through :meth:`label_scene`
    (windowed); otherwise they are decoded whole like tiles, and the labeller needs no ``label_scene``."""

    scenes: bool

    def methods(self, kind: ItemKind) -> dict[str, MethodStamp]:
        """Concept -> what its masks of an item of this kind depend on (and record as provenance)."""

    def label_tiles(self, tiles: list[Pending], archive: MaskArchive, job: LabelJob
                    ) -> Iterator[tuple[Pending, tuple[str, ...] | Exception]]:
        """Segment and write the concepts each tile needs; yields each tile with the concepts written, or with
        the permanent error that failed it (transient errors propagate: the batch is retried)."""

    def label_scene(self, scene: Pending, archive: MaskArchive, job: LabelJob) -> tuple[str, ...]:
        """Segment and write the concepts one scene needs, window by window; returns the concepts written."""


@task(name="label-batch", cache_policy=NO_CACHE, task_run_name="label-{items[0].url}+", **STORAGE_RETRIES)
def label_batch(items: list[WorkItem], labeller: Labeller, job: LabelJob) -> list[ImageOutcome]:
    """Label ``items`` with ``labeller`` into the job's archive; returns one outcome per item, in order."""
    archive = MaskArchive.open(job.archive_url, job.run.storage_options, mode="a")
    outcomes: dict[str, ImageOutcome] = {}
    tiles: list[Pending] = []
    # freshness checks, reads, hashes and decodes are I/O-bound: the batch's items go through them at once
    with ThreadPoolExecutor(max_workers=max(1, min(IO_THREADS, len(items)))) as pool:
        checked = list(pool.map(lambda item: _check(item, labeller, archive, job), items))
    for item, (pending, error, started) in zip(items, checked):
        try:
            if error is not None:
                raise error
            if pending is None:
                outcomes[item.url] = ImageOutcome(item.url, "skipped", seconds=time.perf_counter() - started)
            elif pending.image is None:
                written = labeller.label_scene(pending, archive, job)
                outcomes[item.url] = ImageOutcome(item.url, "labelled", written, time.perf_counter() - started)
            else:
                tiles.append(pending)
        except PERMANENT as exc:
            outcomes[item.url] = _failed(item.url, started, exc)
    for tile, result in labeller.label_tiles(tiles, archive, job):
        if isinstance(result, Exception):
            outcomes[tile.url] = _failed(tile.url, tile.started, result)
        else:
            outcomes[tile.url] = ImageOutcome(tile.url, "labelled", result, time.perf_counter() - tile.started)
    return [outcomes[item.url] for item in items]


def _check(item: WorkItem, labeller: Labeller, archive: MaskArchive, job: LabelJob
           ) -> tuple[Pending | None, Exception | None, float]:
    """:func:`_out_of_date` in a reader thread: a permanent error is returned for the item, a transient one
    raised (the batch is retried)."""
    started = time.perf_counter()
    try:
        return _out_of_date(item, labeller, archive, job, started), None, started
    except PERMANENT as exc:
        return None, exc, started


def _failed(url: str, started: float, exc: Exception) -> ImageOutcome:
    return ImageOutcome(url, "failed", seconds=time.perf_counter() - started, reason=str(exc))


def _out_of_date(item: WorkItem, labeller: Labeller, archive: MaskArchive, job: LabelJob, started: float
                 ) -> Pending | None:
    """The item with the concepts to write, read as far as its labeller needs; None when all are up to date.
    The listing stamp decides without a read when nothing changed; otherwise the sha256 of the bytes does."""
    so, force = job.run.storage_options, job.run.force
    kind: ItemKind = item.kind if labeller.scenes else "tile"
    methods = labeller.methods(kind)
    key = image_key(item.url, job.input_prefix)
    records = archive.mask_records([(concept, key) for concept in methods])
    if item.stamp is not None and not any(
        relabel_reason(records[c, key], m, stamp=item.stamp, force=force) for c, m in methods.items()
    ):
        return None
    if kind == "scene":
        data, sha = None, object_sha256(item.url, so)
    else:
        data = storage.read_bytes(item.url, so)
        sha = hashlib.sha256(data).hexdigest()
    todo = tuple(c for c, m in methods.items() if relabel_reason(records[c, key], m, sha256=sha, force=force))
    if not todo:
        return None
    stamp = item.stamp or storage.stat_stamp(item.url, so)
    image = imageio.decode_image(data, item.url) if data is not None else None
    return Pending(item, key, sha, stamp, todo, image, started, read_seconds=time.perf_counter() - started)


def object_sha256(url: str, storage_options: dict | None) -> str:
    """sha256 of an object read in blocks (bounded memory for scenes of many GB)."""
    fs, path = storage.url_to_fs(url, storage_options)
    digest = hashlib.sha256()
    try:
        with fs.open(path, "rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
    except FileNotFoundError as exc:
        raise ObjectNotFoundError(f"Cannot read {storage.display_url(url)}: no such object") from exc
    return digest.hexdigest()
